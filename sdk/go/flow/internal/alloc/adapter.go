package alloc

// adapterArena is the memory of the WASI preview-1 adapter (its state and
// stack). The adapter needs it on its first call, made while Go's runtime
// starts, so it cannot come from Go code; taken with memory.grow it would
// be handed out again by Go's runtime, which owns all memory above its
// data. Initialised data is never heap: sdk/go/build-component finds this
// array by its leading marker and gives the adapter a cabi_realloc that
// bump-allocates inside it.
var adapterArena = [adapterArenaSize]byte{'f', 'l', 'o', 'w', 'd', '-', 'w', 'a', 's', 'i', '-', 'a', 'r', 'e', 'n', 'a'}

const adapterArenaSize = 192 << 10
