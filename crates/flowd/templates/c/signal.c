/*
 * NAME (signal): counts the events it reads in keyed state and, on every
 * tick, emits the count since the last tick (`{"count": n, "at_ms": t}`) on
 * its first output, then starts again.
 */
#include "flow.h"

#include <stdio.h>
#include <stdlib.h>

/* The count in state, 0 when absent or unreadable. */
static uint64_t load(void) {
    flow_str stored;
    uint64_t count = 0;
    if (flow_state_get(flow_cstr("count"), &stored)) {
        if (!flow_str_u64(stored, &count)) count = 0;
        free((void *)stored.ptr);
    }
    return count;
}

static void store(uint64_t count) {
    char text[24];
    int n = snprintf(text, sizeof text, "%llu", (unsigned long long)count);
    flow_state_set(flow_cstr("count"), (flow_str){text, (size_t)n});
}

bool flow_init(const flow_setup *setup, flow_error *err) {
    static const char *const known[] = {NULL};
    return flow_config_reject_unknown(&setup->config, known, err);
}

bool flow_process(uint32_t input, const flow_batch *batch, flow_output *out, flow_error *err) {
    uint64_t count = load(), more = flow_batch_len(batch);
    store(count > UINT64_MAX - more ? UINT64_MAX : count + more);
    return true;
}

bool flow_tick(uint64_t now_ms, flow_output *out, flow_error *err) {
    uint64_t count = load();
    if (count == 0) return true;
    char id[32], data[64];
    int id_len = snprintf(id, sizeof id, "count-%llu", (unsigned long long)now_ms);
    int data_len = snprintf(data, sizeof data, "{\"count\":%llu,\"at_ms\":%llu}", (unsigned long long)count,
                            (unsigned long long)now_ms);
    flow_event e = {0};
    e.id = (flow_str){id, (size_t)id_len};
    e.source = flow_cstr("urn:NAME");
    e.type = flow_cstr("NAME.count");
    e.datacontenttype = flow_cstr("application/json");
    e.data = (flow_str){data, (size_t)data_len};
    e.has_data = true;
    flow_emit_to(out, 0, &e);
    store(0);
    return true;
}
