/*
 * NAME (bridge): counts the events of each type in keyed state and stamps
 * every event with its type's count so far, in the integer extension `seen`
 * (configurable with `extension=<name>`).
 */
#include "flow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char extension[21] = "seen";

bool flow_init(const flow_setup *setup, flow_error *err) {
    static const char *const known[] = {"extension", NULL};
    if (!flow_config_reject_unknown(&setup->config, known, err)) return false;
    char next[sizeof extension] = "seen";
    flow_str v;
    if (flow_config_get(&setup->config, "extension", &v)) {
        bool ok = v.len > 0 && v.len < sizeof next;
        for (size_t i = 0; ok && i < v.len; i++)
            ok = (v.ptr[i] >= 'a' && v.ptr[i] <= 'z') || (v.ptr[i] >= '0' && v.ptr[i] <= '9');
        if (!ok)
            return flow_invalid_config(err, "`extension=%.*s`: 1 to 20 lower-case letters or digits",
                                       (int)v.len, v.ptr);
        memcpy(next, v.ptr, v.len);
        next[v.len] = 0;
    }
    memcpy(extension, next, sizeof extension); /* only a valid configuration replaces the old one */
    return true;
}

bool flow_process(const flow_batch *batch, flow_output *out, flow_error *err) {
    for (size_t i = 0; i < flow_batch_len(batch); i++) {
        /* The count so far, in decimal under `count/<type>`. */
        flow_str type = flow_type(batch, i);
        char *slot = malloc(6 + type.len);
        if (!slot) abort();
        memcpy(slot, "count/", 6);
        memcpy(slot + 6, type.ptr, type.len);
        flow_str key = {slot, 6 + type.len}, stored;
        uint64_t count = 0;
        if (flow_state_get(key, &stored)) {
            bool ok = flow_str_u64(stored, &count) && count < UINT64_MAX;
            free((void *)stored.ptr);
            if (!ok) {
                free(slot);
                return flow_failed(err, "state `count/%.*s` is not a count", (int)type.len, type.ptr);
            }
        }
        char text[24];
        int n = snprintf(text, sizeof text, "%llu", (unsigned long long)(count + 1));
        flow_str value = {text, (size_t)n};
        flow_state_set(key, value);
        free(slot);

        /* The event again, its extensions kept but for ours, then the count. */
        size_t have = flow_extension_count(batch, i), kept = 0;
        flow_extension *ext = calloc(have + 1, sizeof *ext);
        if (!ext) abort();
        for (size_t k = 0; k < have; k++) {
            flow_extension x = flow_extension_at(batch, i, k);
            if (!flow_str_eq(x.name, extension)) ext[kept++] = x;
        }
        ext[kept++] = (flow_extension){flow_cstr(extension), value, FLOW_EXT_INTEGER};
        flow_event e = flow_event_of(batch, i);
        e.extensions = ext;
        e.extensions_len = kept;
        flow_emit(out, &e);
        free(ext);
    }
    return true;
}
