/*
 * sample-c (bridge): keeps one event in every N, per key, counting in the
 * processor's state so the sampling carries on across restarts.
 *
 * Configuration (`-C key=value`):
 * - `every=<n>`: keep the 1st, (n+1)th, (2n+1)th... event of each key;
 *   1 to 1000000, required.
 * - `key=<attribute>`: count per value of this CloudEvents attribute (`type`,
 *   `subject`, an extension); events without it share one count. Default:
 *   one count for all events.
 * - `stamp=<name>`: kept events get the integer extension <name> (lower-case
 *   letters and digits), their position in their key's count (1, n+1, ...);
 *   without it they are forwarded unchanged.
 *
 * State: `count/<key value>` is the number of events seen, in decimal.
 */
#include "flow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t every;
static char key[64];
static char stamp[21];

bool flow_init(const flow_setup *setup, flow_error *err) {
    static const char *const known[] = {"every", "key", "stamp", NULL};
    if (!flow_config_reject_unknown(&setup->config, known, err)) return false;
    flow_str v;
    uint64_t n;
    if (!flow_config_get(&setup->config, "every", &v)) return flow_invalid_config(err, "`every` is required");
    if (!flow_str_u64(v, &n) || n == 0 || n > 1000000)
        return flow_invalid_config(err, "`every=%.*s`: expected a whole number from 1 to 1000000", (int)v.len, v.ptr);
    char new_key[sizeof key] = "", new_stamp[sizeof stamp] = "";
    if (flow_config_get(&setup->config, "key", &v)) {
        if (v.len == 0 || v.len >= sizeof new_key) return flow_invalid_config(err, "`key`: 1 to 63 characters");
        memcpy(new_key, v.ptr, v.len);
    }
    if (flow_config_get(&setup->config, "stamp", &v)) {
        bool ok = v.len > 0 && v.len < sizeof new_stamp;
        for (size_t i = 0; ok && i < v.len; i++)
            ok = (v.ptr[i] >= 'a' && v.ptr[i] <= 'z') || (v.ptr[i] >= '0' && v.ptr[i] <= '9');
        if (!ok) return flow_invalid_config(err, "`stamp=%.*s`: an extension name is 1 to 20 lower-case letters or digits", (int)v.len, v.ptr);
        memcpy(new_stamp, v.ptr, v.len);
    }
    /* Only a valid configuration replaces the old one. */
    every = n;
    memcpy(key, new_key, sizeof key);
    memcpy(stamp, new_stamp, sizeof stamp);
    return true;
}

bool flow_process(const flow_batch *batch, flow_output *out, flow_error *err) {
    for (size_t i = 0; i < flow_batch_len(batch); i++) {
        flow_str value = {"", 0};
        if (key[0]) flow_attribute(batch, i, key, &value);
        size_t slot_len = 6 + value.len;
        char *slot = malloc(slot_len);
        if (!slot) abort();
        memcpy(slot, "count/", 6);
        memcpy(slot + 6, value.ptr, value.len);
        flow_str name = {slot, slot_len}, stored;
        uint64_t seen = 0;
        if (flow_state_get(name, &stored)) {
            bool ok = flow_str_u64(stored, &seen) && seen < UINT64_MAX;
            free((void *)stored.ptr);
            if (!ok) {
                free(slot);
                return flow_failed(err, "state `count/%.*s` is not a count", (int)value.len, value.ptr);
            }
        }
        char text[24];
        int n = snprintf(text, sizeof text, "%llu", (unsigned long long)(seen + 1));
        flow_state_set(name, (flow_str){text, (size_t)n});
        free(slot);
        if (seen % every != 0) continue;
        flow_str id = flow_id(batch, i);
        flow_log(FLOW_DEBUG, "keeps %.*s, number %s of key `%.*s`", (int)id.len, id.ptr, text, (int)value.len,
                 value.ptr);
        if (!stamp[0]) {
            flow_forward(out, i);
            continue;
        }
        /* Re-emit with the stamp in place of any extension of that name. */
        size_t count = flow_extension_count(batch, i);
        flow_extension *ext = calloc(count + 1, sizeof *ext);
        if (!ext) abort();
        size_t kept = 0;
        for (size_t k = 0; k < count; k++) {
            flow_extension x = flow_extension_at(batch, i, k);
            if (!flow_str_eq(x.name, stamp)) ext[kept++] = x;
        }
        ext[kept++] = (flow_extension){flow_cstr(stamp), {text, (size_t)n}, FLOW_EXT_INTEGER};
        flow_event e = flow_event_of(batch, i);
        e.extensions = ext;
        e.extensions_len = kept;
        flow_emit(out, &e);
        free(ext);
    }
    return true;
}
