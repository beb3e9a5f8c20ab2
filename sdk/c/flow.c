/*
 * flow.c: the C SDK over wit-bindgen's C bindings of one world. Compiled
 * with -DFLOW_BRIDGE, -DFLOW_COLLECTOR, -DFLOW_DISTRIBUTOR or -DFLOW_SIGNAL
 * next to that world's generated <world>.c/.h (sdk/c/build-component).
 *
 * It owns what the bindings hand over: arguments are freed after the
 * processor's call, results are malloc'd and freed by the bindings'
 * post-return functions.
 */
#include "flow.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(FLOW_BRIDGE)
#include "bridge_processor.h"
#define W(x) bridge_processor_##x
#define LIFE(x) exports_bridge_processor_##x
#define ROUTED 0
#elif defined(FLOW_COLLECTOR)
#include "collector_processor.h"
#define W(x) collector_processor_##x
#define LIFE(x) exports_collector_processor_##x
#define ROUTED 0
#elif defined(FLOW_DISTRIBUTOR)
#include "distributor_processor.h"
#define W(x) distributor_processor_##x
#define LIFE(x) exports_distributor_processor_##x
#define ROUTED 1
#elif defined(FLOW_SIGNAL)
#include "signal_processor.h"
#define W(x) signal_processor_##x
#define LIFE(x) exports_signal_processor_##x
#define ROUTED 1
#else
#error "define one of FLOW_BRIDGE, FLOW_COLLECTOR, FLOW_DISTRIBUTOR, FLOW_SIGNAL"
#endif

enum { EVENT_WORDS = 18, EXTENSION_WORDS = 5 };
#define NO_DATA 0xffffffffu
#define CREATED 0x80000000u

struct flow_error {
    eson_flow_types_error_t raw;
};

static void *grow(void *ptr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return ptr;
    size_t cap2 = *cap ? *cap : 16;
    while (cap2 < need) cap2 *= 2;
    void *p = realloc(ptr, cap2 * size);
    if (!p) abort();
    *cap = cap2;
    return p;
}

/* ---- strings ---- */

flow_str flow_cstr(const char *s) { return (flow_str){s, strlen(s)}; }

bool flow_str_eq(flow_str s, const char *text) {
    size_t n = strlen(text);
    return s.len == n && memcmp(s.ptr, text, n) == 0;
}

bool flow_str_u64(flow_str s, uint64_t *value) {
    if (s.len == 0 || s.len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned char)s.ptr[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *value = v;
    return true;
}

static flow_str of_wit(const W(string_t) *s) { return (flow_str){(const char *)s->ptr, s->len}; }

/* ---- errors ---- */

/* Preset so that a processor returning false without naming an error still
 * reports one instead of leaving the bindings an uninitialised variant. */
static void preset(flow_error *err) {
    static const char message[] = "the processor returned false without an error";
    size_t n = sizeof message - 1;
    uint8_t *copy = malloc(n);
    if (!copy) abort();
    memcpy(copy, message, n);
    err->raw.tag = ESON_FLOW_TYPES_ERROR_FAILED;
    err->raw.val.failed = (W(string_t)){copy, n};
}

/* Frees the message err holds (the preset, or an earlier error call's):
 * an error call replaces it, a successful call drops it. */
static void clear_preset(flow_error *err) {
    if (err->raw.tag == ESON_FLOW_TYPES_ERROR_EVENT_FAILED) {
        free(err->raw.val.event_failed.message.ptr);
    } else if (err->raw.tag == ESON_FLOW_TYPES_ERROR_INVALID_CONFIG) {
        free(err->raw.val.invalid_config.ptr);
    } else {
        free(err->raw.val.failed.ptr);
    }
    err->raw.tag = ESON_FLOW_TYPES_ERROR_FAILED;
    err->raw.val.failed = (W(string_t)){NULL, 0};
}

static bool fail(flow_error *err, uint8_t tag, uint32_t index, const char *format, va_list args) {
    char small[1];
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(small, sizeof small, format, copy);
    va_end(copy);
    W(string_t) message = {NULL, 0};
    if (n > 0) {
        message.ptr = malloc((size_t)n + 1);
        if (!message.ptr) abort();
        vsnprintf((char *)message.ptr, (size_t)n + 1, format, args);
        message.len = (size_t)n;
    }
    clear_preset(err);
    err->raw.tag = tag;
    if (tag == ESON_FLOW_TYPES_ERROR_EVENT_FAILED) {
        err->raw.val.event_failed.index = index;
        err->raw.val.event_failed.message = message;
    } else if (tag == ESON_FLOW_TYPES_ERROR_INVALID_CONFIG) {
        err->raw.val.invalid_config = message;
    } else {
        err->raw.val.failed = message;
    }
    return false;
}

bool flow_invalid_config(flow_error *err, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fail(err, ESON_FLOW_TYPES_ERROR_INVALID_CONFIG, 0, format, args);
    va_end(args);
    return false;
}

bool flow_event_failed(flow_error *err, size_t index, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fail(err, ESON_FLOW_TYPES_ERROR_EVENT_FAILED, (uint32_t)index, format, args);
    va_end(args);
    return false;
}

bool flow_failed(flow_error *err, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fail(err, ESON_FLOW_TYPES_ERROR_FAILED, 0, format, args);
    va_end(args);
    return false;
}

/* ---- configuration ---- */

bool flow_config_get(const flow_config *config, const char *key, flow_str *value) {
    for (size_t i = config->len; i-- > 0;) {
        if (flow_str_eq(config->pairs[i].key, key)) {
            *value = config->pairs[i].value;
            return true;
        }
    }
    return false;
}

bool flow_config_reject_unknown(const flow_config *config, const char *const *known, flow_error *err) {
    for (size_t i = 0; i < config->len; i++) {
        bool ok = false;
        for (const char *const *k = known; k && *k; k++) ok = ok || flow_str_eq(config->pairs[i].key, *k);
        if (!ok) {
            return flow_invalid_config(err, "unknown key `%.*s`", (int)config->pairs[i].key.len,
                                       config->pairs[i].key.ptr);
        }
    }
    return true;
}

/* The instance's setup, as the processor sees it, and the lists it points into. */
static flow_setup current;
static eson_flow_types_setup_t current_raw;

static flow_config config_of(const eson_flow_types_config_t *raw) {
    flow_pair *pairs = raw->len ? calloc(raw->len, sizeof *pairs) : NULL;
    if (raw->len && !pairs) abort();
    for (size_t i = 0; i < raw->len; i++) {
        pairs[i].key = of_wit(&raw->ptr[i].f0);
        pairs[i].value = of_wit(&raw->ptr[i].f1);
    }
    return (flow_config){pairs, raw->len};
}

static const flow_str *names_of(const W(list_string_t) *raw) {
    flow_str *names = raw->len ? calloc(raw->len, sizeof *names) : NULL;
    if (raw->len && !names) abort();
    for (size_t i = 0; i < raw->len; i++) names[i] = of_wit(&raw->ptr[i]);
    return names;
}

/* `current` is the setup the processor sees. It is set before flow_init, so
 * that pointers the processor keeps into its setup stay valid after the
 * call, and restored when init fails. */
bool LIFE(init)(W(setup_t) *setup, W(error_t) *err) {
    flow_setup before = current;
    current = (flow_setup){config_of(&setup->config), names_of(&setup->inputs), setup->inputs.len,
                           names_of(&setup->outputs), setup->outputs.len};
    preset((flow_error *)err);
    if (!flow_init(&current, (flow_error *)err)) {
        free((void *)current.config.pairs);
        free((void *)current.inputs);
        free((void *)current.outputs);
        eson_flow_types_setup_free(setup);
        current = before;
        return false;
    }
    clear_preset((flow_error *)err);
    current_raw = *setup;
    return true;
}

__attribute__((weak)) bool flow_update(const flow_config *config, flow_error *err) {
    flow_config before = current.config;
    current.config = *config;
    bool ok = flow_init(&current, err);
    current.config = before;
    return ok;
}

bool LIFE(update)(W(config_t) *config, W(error_t) *err) {
    flow_config c = config_of(config);
    preset((flow_error *)err);
    if (!flow_update(&c, (flow_error *)err)) {
        free((void *)c.pairs);
        eson_flow_types_config_free(config);
        return false;
    }
    clear_preset((flow_error *)err);
    free((void *)current.config.pairs);
    eson_flow_types_config_free(&current_raw.config);
    current.config = c;
    current_raw.config = *config;
    return true;
}

__attribute__((weak)) void flow_teardown(void) {}

void LIFE(teardown)(void) { flow_teardown(); }

/* ---- events ---- */

size_t flow_batch_len(const flow_batch *b) { return b->events_len / EVENT_WORDS; }

static const uint32_t *words(const flow_batch *b, size_t i) { return b->events + i * EVENT_WORDS; }

/* A span outside the batch (never sent by a correct host) reads as empty. */
static flow_str span(const flow_batch *b, uint32_t offset, uint32_t len) {
    if ((uint64_t)offset + len > b->bytes_len) return (flow_str){"", 0};
    return (flow_str){(const char *)b->bytes + offset, len};
}

static flow_str attr(const flow_batch *b, size_t i, int w) { return span(b, words(b, i)[w], words(b, i)[w + 1]); }

static bool optional(const flow_batch *b, size_t i, int w, flow_str *value) {
    *value = attr(b, i, w);
    return value->len > 0;
}

flow_str flow_id(const flow_batch *b, size_t i) { return attr(b, i, 0); }
flow_str flow_source(const flow_batch *b, size_t i) { return attr(b, i, 2); }
flow_str flow_type(const flow_batch *b, size_t i) { return attr(b, i, 4); }
bool flow_subject(const flow_batch *b, size_t i, flow_str *v) { return optional(b, i, 6, v); }
bool flow_time(const flow_batch *b, size_t i, flow_str *v) { return optional(b, i, 8, v); }
bool flow_datacontenttype(const flow_batch *b, size_t i, flow_str *v) { return optional(b, i, 10, v); }
bool flow_dataschema(const flow_batch *b, size_t i, flow_str *v) { return optional(b, i, 12, v); }

bool flow_data(const flow_batch *b, size_t i, flow_str *v) {
    if (words(b, i)[14] == NO_DATA) return false;
    *v = attr(b, i, 14);
    return true;
}

size_t flow_extension_count(const flow_batch *b, size_t i) {
    uint64_t first = words(b, i)[16], count = words(b, i)[17];
    uint64_t have = b->extensions_len / EXTENSION_WORDS;
    return first + count <= have ? (size_t)count : 0;
}

flow_extension flow_extension_at(const flow_batch *b, size_t i, size_t k) {
    const uint32_t *x = b->extensions + (words(b, i)[16] + k) * EXTENSION_WORDS;
    return (flow_extension){span(b, x[0], x[1]), span(b, x[2], x[3]), (flow_ext_kind)x[4]};
}

bool flow_attribute(const flow_batch *b, size_t i, const char *name, flow_str *value) {
    static const struct { const char *name; int word; } core[] = {
        {"id", 0}, {"source", 2}, {"type", 4}, {"subject", 6},
        {"time", 8}, {"datacontenttype", 10}, {"dataschema", 12},
    };
    for (size_t c = 0; c < sizeof core / sizeof core[0]; c++) {
        if (strcmp(name, core[c].name) == 0) return optional(b, i, core[c].word, value);
    }
    for (size_t k = 0; k < flow_extension_count(b, i); k++) {
        flow_extension x = flow_extension_at(b, i, k);
        if (flow_str_eq(x.name, name)) {
            *value = x.value;
            return true;
        }
    }
    return false;
}

flow_event flow_event_of(const flow_batch *b, size_t i) {
    flow_event e = {0};
    e.id = flow_id(b, i);
    e.source = flow_source(b, i);
    e.type = flow_type(b, i);
    flow_subject(b, i, &e.subject);
    flow_time(b, i, &e.time);
    flow_datacontenttype(b, i, &e.datacontenttype);
    flow_dataschema(b, i, &e.dataschema);
    e.has_data = flow_data(b, i, &e.data);
    return e;
}

/* ---- outputs ---- */

typedef struct {
    uint32_t *ptr;
    size_t len, cap;
} words_buf;

static void push(words_buf *w, uint32_t v) {
    w->ptr = grow(w->ptr, &w->cap, w->len + 1, sizeof *w->ptr);
    w->ptr[w->len++] = v;
}

struct flow_output {
    uint8_t *bytes;
    size_t bytes_len, bytes_cap;
    words_buf events, extensions, emits, ports;
};

static void text(flow_output *o, flow_str s) {
    if ((uint64_t)o->bytes_len + s.len > 0x7fffffffu) abort();
    push(&o->events, (uint32_t)o->bytes_len);
    push(&o->events, (uint32_t)s.len);
    if (s.len == 0) return;
    o->bytes = grow(o->bytes, &o->bytes_cap, o->bytes_len + s.len, 1);
    memcpy(o->bytes + o->bytes_len, s.ptr, s.len);
    o->bytes_len += s.len;
}

static uint32_t pack(flow_output *o, const flow_event *e) {
    uint32_t first = (uint32_t)(o->extensions.len / EXTENSION_WORDS);
    for (size_t k = 0; k < e->extensions_len; k++) {
        /* name and value go to `bytes`; their spans to `extensions`. */
        size_t at = o->events.len;
        text(o, e->extensions[k].name);
        text(o, e->extensions[k].value);
        for (int w = 0; w < 4; w++) push(&o->extensions, o->events.ptr[at + w]);
        push(&o->extensions, (uint32_t)e->extensions[k].kind);
        o->events.len = at;
    }
    uint32_t index = (uint32_t)(o->events.len / EVENT_WORDS);
    flow_str fields[] = {e->id, e->source, e->type, e->subject, e->time, e->datacontenttype, e->dataschema};
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) text(o, fields[f]);
    if (e->has_data) {
        text(o, e->data);
    } else {
        push(&o->events, NO_DATA);
        push(&o->events, 0);
    }
    push(&o->events, first);
    push(&o->events, (uint32_t)e->extensions_len);
    return index;
}

void flow_forward_to(flow_output *o, uint32_t port, size_t index) {
    push(&o->emits, (uint32_t)index & ~CREATED);
    push(&o->ports, port);
}

void flow_emit_to(flow_output *o, uint32_t port, const flow_event *e) {
    push(&o->emits, CREATED | pack(o, e));
    push(&o->ports, port);
}

/* In a routed world every emit needs a port: the plain calls use port 0, so
 * `emits` and `ports` stay the same length whichever calls a processor mixes. */
void flow_forward(flow_output *o, size_t index) { flow_forward_to(o, 0, index); }
void flow_emit(flow_output *o, const flow_event *e) { flow_emit_to(o, 0, e); }

static flow_batch batch_of(const eson_flow_types_batch_t *raw) {
    return (flow_batch){raw->bytes.ptr, raw->bytes.len, raw->events.ptr, raw->events.len,
                        raw->extensions.ptr, raw->extensions.len};
}

static eson_flow_types_batch_t created_of(flow_output *o) {
    return (eson_flow_types_batch_t){{o->bytes, o->bytes_len},
                                     {o->events.ptr, o->events.len},
                                     {o->extensions.ptr, o->extensions.len}};
}

/* A failed call's outputs are dropped. */
static void drop(flow_output *o) {
    free(o->bytes);
    free(o->events.ptr);
    free(o->extensions.ptr);
    free(o->emits.ptr);
    free(o->ports.ptr);
}

#if ROUTED
static bool routed(bool ok, flow_output *o, eson_flow_types_routed_output_t *ret, flow_error *err) {
    if (!ok) {
        drop(o);
        return false;
    }
    clear_preset(err);
    ret->created = created_of(o);
    ret->emits = (W(list_u32_t)){o->emits.ptr, o->emits.len};
    ret->ports = (W(list_u32_t)){o->ports.ptr, o->ports.len};
    return true;
}
#else
static bool output(bool ok, flow_output *o, eson_flow_types_output_t *ret, flow_error *err) {
    if (!ok) {
        drop(o);
        return false;
    }
    clear_preset(err);
    free(o->ports.ptr);
    ret->created = created_of(o);
    ret->emits = (W(list_u32_t)){o->emits.ptr, o->emits.len};
    return true;
}
#endif

#if defined(FLOW_BRIDGE)
bool exports_eson_flow_bridge_process(eson_flow_types_batch_t *events, eson_flow_types_output_t *ret,
                                      eson_flow_types_error_t *err) {
    flow_output o = {0};
    flow_batch b = batch_of(events);
    preset((flow_error *)err);
    bool ok = flow_process(&b, &o, (flow_error *)err);
    eson_flow_types_batch_free(events);
    return output(ok, &o, ret, (flow_error *)err);
}
#elif defined(FLOW_COLLECTOR)
bool exports_eson_flow_collector_process(uint32_t input, eson_flow_types_batch_t *events,
                                         eson_flow_types_output_t *ret, eson_flow_types_error_t *err) {
    flow_output o = {0};
    flow_batch b = batch_of(events);
    preset((flow_error *)err);
    bool ok = flow_process(input, &b, &o, (flow_error *)err);
    eson_flow_types_batch_free(events);
    return output(ok, &o, ret, (flow_error *)err);
}
#elif defined(FLOW_DISTRIBUTOR)
bool exports_eson_flow_distributor_process(eson_flow_types_batch_t *events, eson_flow_types_routed_output_t *ret,
                                           eson_flow_types_error_t *err) {
    flow_output o = {0};
    flow_batch b = batch_of(events);
    preset((flow_error *)err);
    bool ok = flow_process(&b, &o, (flow_error *)err);
    eson_flow_types_batch_free(events);
    return routed(ok, &o, ret, (flow_error *)err);
}
#elif defined(FLOW_SIGNAL)
bool exports_eson_flow_signal_process(uint32_t input, eson_flow_types_batch_t *events,
                                      eson_flow_types_routed_output_t *ret, eson_flow_types_error_t *err) {
    flow_output o = {0};
    flow_batch b = batch_of(events);
    preset((flow_error *)err);
    bool ok = flow_process(input, &b, &o, (flow_error *)err);
    eson_flow_types_batch_free(events);
    return routed(ok, &o, ret, (flow_error *)err);
}

bool exports_eson_flow_signal_tick(uint64_t now_ms, eson_flow_types_routed_output_t *ret,
                                   eson_flow_types_error_t *err) {
    flow_output o = {0};
    preset((flow_error *)err);
    return routed(flow_tick(now_ms, &o, (flow_error *)err), &o, ret, (flow_error *)err);
}
#endif

/* ---- host ---- */

static W(string_t) wit_of(flow_str s) { return (W(string_t)){(uint8_t *)s.ptr, s.len}; }

bool flow_state_get(flow_str key, flow_str *value) {
    W(string_t) k = wit_of(key);
    W(list_u8_t) v;
    if (!eson_flow_state_get(&k, &v)) return false;
    /* An empty list may come with a dangling non-null pointer; the caller
     * frees what it gets, so hand over NULL. */
    if (v.len == 0) v.ptr = NULL;
    *value = (flow_str){(const char *)v.ptr, v.len};
    return true;
}

void flow_state_set(flow_str key, flow_str value) {
    W(string_t) k = wit_of(key);
    W(list_u8_t) v = {(uint8_t *)value.ptr, value.len};
    eson_flow_state_set(&k, &v);
}

void flow_state_delete(flow_str key) {
    W(string_t) k = wit_of(key);
    eson_flow_state_delete(&k);
}

/* Copies src to dst (at least 3 * len bytes), each byte that does not
 * start a complete, valid UTF-8 sequence replaced by U+FFFD; returns the
 * length written. */
static size_t utf8_clean(const unsigned char *src, size_t len, char *dst) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = src[i];
        size_t need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        bool ok = need > 0 && i + need <= len;
        for (size_t k = 1; ok && k < need; k++) ok = (src[i + k] & 0xc0) == 0x80;
        if (ok && need == 2) ok = c >= 0xc2;
        if (ok && need == 3) {
            uint32_t cp = ((c & 0x0fu) << 12) | ((src[i + 1] & 0x3fu) << 6) | (src[i + 2] & 0x3fu);
            ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        }
        if (ok && need == 4) {
            uint32_t cp = ((c & 0x07u) << 18) | ((src[i + 1] & 0x3fu) << 12) | ((src[i + 2] & 0x3fu) << 6) |
                          (src[i + 3] & 0x3fu);
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (ok) {
            memcpy(dst + o, src + i, need);
            o += need;
            i += need;
        } else {
            memcpy(dst + o, "\xef\xbf\xbd", 3);
            o += 3;
            i += 1;
        }
    }
    return o;
}

void flow_log(flow_level level, const char *format, ...) {
    char line[1024];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    /* The host takes UTF-8 only: anything else (a cut sequence at the end,
     * or invalid bytes from event data) becomes U+FFFD. */
    static char text[3 * sizeof line];
    size_t out = utf8_clean((const unsigned char *)line, len, text);
    W(string_t) message = {(uint8_t *)text, out};
    eson_flow_log_log((eson_flow_log_level_t)level, &message);
}

uint64_t flow_now_ms(void) { return eson_flow_clock_now_ms(); }
