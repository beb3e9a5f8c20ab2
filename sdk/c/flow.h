/*
 * flow.h: write ESON flow processors in C, compiled to WebAssembly
 * components that a flowd host runs (docs/c.md).
 *
 * A processor defines the functions of its kind, chosen when flow.c is
 * compiled (-DFLOW_BRIDGE, -DFLOW_COLLECTOR, -DFLOW_DISTRIBUTOR or
 * -DFLOW_SIGNAL; sdk/c/build-component does it):
 *
 *   bool flow_init(const flow_setup *setup, flow_error *err);
 *   bridge:      bool flow_process(const flow_batch *batch, flow_output *out, flow_error *err);
 *   collector:   bool flow_process(uint32_t input, const flow_batch *batch, flow_output *out, flow_error *err);
 *   distributor: as bridge, writing with flow_forward_to / flow_emit_to;
 *   signal:      as collector, routed, and
 *                bool flow_tick(uint64_t now_ms, flow_output *out, flow_error *err);
 *
 * and may define flow_update (default: flow_init again with the new
 * configuration, so flow_init checks everything before it keeps anything:
 * a refused configuration is freed) and flow_teardown (default: nothing). A function returns
 * true on success, or the false that flow_invalid_config, flow_event_failed
 * or flow_failed return after filling `err`.
 *
 * Lifetimes: a batch and its strings are valid during the call that got
 * them; the setup until the next successful update. Events arrive packed
 * (docs/wit.md): an event is an index into its batch, and forwarding one
 * sends back only that index. An allocation failure traps the instance
 * (the host retries the batch on a fresh one).
 */
#ifndef FLOW_H
#define FLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A string or byte span, not NUL-terminated. */
typedef struct {
    const char *ptr;
    size_t len;
} flow_str;

/* A flow_str of a C string literal or NUL-terminated string. */
flow_str flow_cstr(const char *s);
/* Whether s holds exactly the NUL-terminated text. */
bool flow_str_eq(flow_str s, const char *text);
/* Parses a decimal unsigned integer that fills s. */
bool flow_str_u64(flow_str s, uint64_t *value);

typedef struct {
    flow_str key, value;
} flow_pair;

/* The configuration, in the order the user gave it (a key may repeat). */
typedef struct {
    const flow_pair *pairs;
    size_t len;
} flow_config;

/* What a fresh instance is told: its configuration and its port names. */
typedef struct {
    flow_config config;
    const flow_str *inputs;
    size_t inputs_len;
    const flow_str *outputs;
    size_t outputs_len;
} flow_setup;

/* The last value of key; false when absent. */
bool flow_config_get(const flow_config *config, const char *key, flow_str *value);

typedef struct flow_error flow_error;

/* Refuses a key not in `known` (a NULL-terminated list), naming it. */
bool flow_config_reject_unknown(const flow_config *config, const char *const *known, flow_error *err);

/* A batch of packed events (docs/wit.md). */
typedef struct {
    const uint8_t *bytes;
    size_t bytes_len;
    const uint32_t *events;
    size_t events_len;
    const uint32_t *extensions;
    size_t extensions_len;
} flow_batch;

/* The number of events. */
size_t flow_batch_len(const flow_batch *batch);

/* The required attributes of event i. */
flow_str flow_id(const flow_batch *batch, size_t i);
flow_str flow_source(const flow_batch *batch, size_t i);
flow_str flow_type(const flow_batch *batch, size_t i);
/* Optional attributes and the data: false when the event has none. */
bool flow_subject(const flow_batch *batch, size_t i, flow_str *value);
bool flow_time(const flow_batch *batch, size_t i, flow_str *value);
bool flow_datacontenttype(const flow_batch *batch, size_t i, flow_str *value);
bool flow_dataschema(const flow_batch *batch, size_t i, flow_str *value);
bool flow_data(const flow_batch *batch, size_t i, flow_str *value);

typedef enum { FLOW_EXT_STRING = 0, FLOW_EXT_BOOLEAN = 1, FLOW_EXT_INTEGER = 2 } flow_ext_kind;

/* An extension attribute; the value in canonical string form. */
typedef struct {
    flow_str name, value;
    flow_ext_kind kind;
} flow_extension;

/* The number of extension attributes of event i. */
size_t flow_extension_count(const flow_batch *batch, size_t i);
/* The k-th extension of event i (k < flow_extension_count). */
flow_extension flow_extension_at(const flow_batch *batch, size_t i, size_t k);
/* A core or extension attribute by its CloudEvents name. */
bool flow_attribute(const flow_batch *batch, size_t i, const char *name, flow_str *value);

/* An event to create: id, source and type required; an empty optional
 * attribute is absent; data only when has_data. */
typedef struct {
    flow_str id, source, type, subject, time, datacontenttype, dataschema, data;
    bool has_data;
    const flow_extension *extensions;
    size_t extensions_len;
} flow_event;

/* Event i of the batch as a flow_event (its strings point into the batch;
 * extensions are left for the caller to set). */
flow_event flow_event_of(const flow_batch *batch, size_t i);

typedef struct flow_output flow_output;

/* Bridge and collector: forward input event `index` unchanged, or emit a new one. */
void flow_forward(flow_output *out, size_t index);
void flow_emit(flow_output *out, const flow_event *event);
/* Distributor and signal: the same, to an output port (the calls above
 * send to port 0 there). */
void flow_forward_to(flow_output *out, uint32_t port, size_t index);
void flow_emit_to(flow_output *out, uint32_t port, const flow_event *event);

/* Fill err and return false: a refused configuration (name the key), one
 * failed event of the batch (it is dead-lettered, the others retried), or
 * the whole call. */
bool flow_invalid_config(flow_error *err, const char *format, ...) __attribute__((format(printf, 2, 3)));
bool flow_event_failed(flow_error *err, size_t index, const char *format, ...) __attribute__((format(printf, 3, 4)));
bool flow_failed(flow_error *err, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Keyed state: writes of a call commit when it succeeds and roll back when
 * it fails. flow_state_get's value is malloc'd: free(value->ptr). */
bool flow_state_get(flow_str key, flow_str *value);
void flow_state_set(flow_str key, flow_str value);
void flow_state_delete(flow_str key);

/* Log levels. */
typedef enum { FLOW_TRACE = 0, FLOW_DEBUG, FLOW_INFO, FLOW_WARN, FLOW_ERROR } flow_level;
/* A line in the host's log, tagged with the processor. */
void flow_log(flow_level level, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* The host's wall-clock time, ms since the Unix epoch. */
uint64_t flow_now_ms(void);

/* What the processor defines (see the top of this file). */
bool flow_init(const flow_setup *setup, flow_error *err);
bool flow_update(const flow_config *config, flow_error *err);
void flow_teardown(void);
#if defined(FLOW_BRIDGE) || defined(FLOW_DISTRIBUTOR)
bool flow_process(const flow_batch *batch, flow_output *out, flow_error *err);
#elif defined(FLOW_COLLECTOR) || defined(FLOW_SIGNAL)
bool flow_process(uint32_t input, const flow_batch *batch, flow_output *out, flow_error *err);
#endif
#if defined(FLOW_SIGNAL)
bool flow_tick(uint64_t now_ms, flow_output *out, flow_error *err);
#endif

#ifdef __cplusplus
}
#endif
#endif
