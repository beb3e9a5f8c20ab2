/*
 * NAME (distributor): events whose type starts with `prefix=` (default
 * `created.`) go to the first output, the others to the second.
 */
#include "flow.h"

#include <string.h>

static char prefix[128] = "created.";

bool flow_init(const flow_setup *setup, flow_error *err) {
    static const char *const known[] = {"prefix", NULL};
    if (!flow_config_reject_unknown(&setup->config, known, err)) return false;
    if (setup->outputs_len != 2) return flow_invalid_config(err, "two outputs: matching, then the others");
    char next[sizeof prefix] = "created.";
    flow_str v;
    if (flow_config_get(&setup->config, "prefix", &v)) {
        if (v.len >= sizeof next || memchr(v.ptr, 0, v.len))
            return flow_invalid_config(err, "`prefix`: at most %zu bytes of text", sizeof next - 1);
        memcpy(next, v.ptr, v.len);
        next[v.len] = 0;
    }
    memcpy(prefix, next, sizeof prefix);
    return true;
}

bool flow_process(const flow_batch *batch, flow_output *out, flow_error *err) {
    size_t n = strlen(prefix);
    for (size_t i = 0; i < flow_batch_len(batch); i++) {
        flow_str type = flow_type(batch, i);
        bool matches = type.len >= n && memcmp(type.ptr, prefix, n) == 0;
        flow_forward_to(out, matches ? 0 : 1, i);
    }
    return true;
}
