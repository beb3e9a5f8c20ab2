/*
 * NAME (collector): merges its inputs into one output, each event tagged
 * with the input it came from in the extension `input`.
 */
#include "flow.h"

#include <stdlib.h>

/* Valid until the next successful update (flow.h), which calls flow_init again. */
static const flow_setup *setup_;

bool flow_init(const flow_setup *setup, flow_error *err) {
    static const char *const known[] = {NULL};
    if (!flow_config_reject_unknown(&setup->config, known, err)) return false;
    setup_ = setup;
    return true;
}

bool flow_process(uint32_t input, const flow_batch *batch, flow_output *out, flow_error *err) {
    flow_str name = input < setup_->inputs_len ? setup_->inputs[input] : flow_cstr("");
    for (size_t i = 0; i < flow_batch_len(batch); i++) {
        size_t have = flow_extension_count(batch, i), kept = 0;
        flow_extension *ext = calloc(have + 1, sizeof *ext);
        if (!ext) abort();
        for (size_t k = 0; k < have; k++) {
            flow_extension x = flow_extension_at(batch, i, k);
            if (!flow_str_eq(x.name, "input")) ext[kept++] = x;
        }
        ext[kept++] = (flow_extension){flow_cstr("input"), name, FLOW_EXT_STRING};
        flow_event e = flow_event_of(batch, i);
        e.extensions = ext;
        e.extensions_len = kept;
        flow_emit(out, &e);
        free(ext);
    }
    return true;
}
