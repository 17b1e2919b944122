// gpugd CUDA emulator, the runtime half: fibers, the block scheduler, launch with fault
// capture, and the table of a family's kernels with their parameter lists. Included at the
// end of the generated translation unit (after the family's source), then
// GPUGD_EMU_TABLE(GPUGD_EMU_KERNEL(name) ...) lists the kernels found by the build.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace gpugd {  // the half-precision storage types, if the family has them
struct f16_t;
struct bf16_t;
}  // namespace gpugd

// The context switch: save the callee-saved registers, MXCSR and the x87 control word on
// the current stack, store its pointer in *save_sp, load new_sp and restore the same.
asm(R"(
  .text
  .p2align 4
  .hidden gpugd_emu_switch
  .globl gpugd_emu_switch
  .type gpugd_emu_switch,@function
gpugd_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gpugd_emu_switch, .-gpugd_emu_switch
)");

extern "C" char __start_gpugd_emu_shared[] __attribute__((weak));
extern "C" char __stop_gpugd_emu_shared[] __attribute__((weak));

namespace gpugd_emu {

constexpr size_t STACK_BYTES = 64 * 1024;  // per fiber, with a guard page below it
constexpr size_t GUARD_BYTES = 4096;
constexpr unsigned MAX_THREADS = 1024;

struct Stacks {
  unsigned char* base = nullptr;
  unsigned count = 0;
} stacks;

std::vector<Fiber> fiber_store;
// __shared__ statics of template functions: g++ drops the section attribute for them (they
// are COMDAT), so the build lists them (nm) and the loader registers their addresses here.
std::vector<std::pair<unsigned char*, size_t>> shared_regions;
void* fault_address = nullptr;
int launch_depth = 0;

void fail(const char* fmt, ...) {
  char body[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  const Fiber* f = rt.cur;
  if (f != nullptr)
    snprintf(rt.message, sizeof rt.message, "block (%u,%u,%u) thread (%u,%u,%u): %s",
             rt.block_idx.x, rt.block_idx.y, rt.block_idx.z, f->tid.x, f->tid.y, f->tid.z, body);
  else
    snprintf(rt.message, sizeof rt.message, "block (%u,%u,%u): %s", rt.block_idx.x,
             rt.block_idx.y, rt.block_idx.z, body);
  siglongjmp(rt.escape, 1);
}

static void ensure_stacks(unsigned n) {
  if (n <= stacks.count) return;
  if (stacks.base) munmap(stacks.base, stacks.count * (STACK_BYTES + GUARD_BYTES));
  const size_t bytes = n * (STACK_BYTES + GUARD_BYTES);
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    stacks.base = nullptr;
    stacks.count = 0;
    return;
  }
  stacks.base = static_cast<unsigned char*>(m);
  stacks.count = n;
  for (unsigned i = 0; i < n; ++i)
    mprotect(stacks.base + i * (STACK_BYTES + GUARD_BYTES), GUARD_BYTES, PROT_NONE);
}

extern "C" __attribute__((noreturn, used)) void gpugd_emu_fiber_main() {
  rt.thunk(rt.args);
  rt.cur->state = DONE;
  gpugd_emu_switch(&rt.cur->sp, rt.sched_sp);
  __builtin_unreachable();
}

static void start_fiber(Fiber* f, unsigned i) {
  unsigned char* top = stacks.base + i * (STACK_BYTES + GUARD_BYTES) + GUARD_BYTES + STACK_BYTES;
  auto* a = reinterpret_cast<unsigned long long*>(top - 16);
  a[0] = reinterpret_cast<unsigned long long>(&gpugd_emu_fiber_main);  // `ret` lands here
  a[1] = 0;
  for (int r = 1; r <= 6; ++r) a[-r] = 0;  // rbp, rbx, r12-r15
  auto* ctl = reinterpret_cast<unsigned*>(a - 7);
  ctl[0] = 0x1F80u;  // MXCSR: round to nearest, all exceptions masked, no FTZ/DAZ
  ctl[1] = 0x037Fu;  // x87 control word default
  f->sp = a - 7;
  f->state = READY;
  f->site = nullptr;
  f->mask = 0;
  f->v = 0;
}

static const char* state_name(int s) {
  switch (s) {
    case READY:
      return "running";
    case AT_BARRIER:
      return "at __syncthreads()";
    case AT_WARP:
      return "in a warp operation";
    default:
      return "exited";
  }
}

// Release warp `w`'s lanes waiting in a warp operation whose every named lane is there.
static bool release_warp(unsigned w) {
  const unsigned n = rt.nthreads, base = w * 32;
  Fiber* fs = rt.fibers;
  bool released = false;
  for (unsigned i = base; i < n && i < base + 32; ++i) {
    Fiber* f = &fs[i];
    if (f->state != AT_WARP) continue;
    const unsigned m = f->mask;
    bool all = true;
    for (unsigned l = 0; l < 32 && all; ++l) {
      if (!((m >> l) & 1u)) continue;
      if (base + l >= n) {
        rt.cur = f;
        fail("warp operation with mask 0x%08x names lane %u, beyond the block's %u threads", m,
             l, n);
      }
      const Fiber* o = &fs[base + l];
      if (o->state == DONE) {
        rt.cur = f;
        fail("warp operation with mask 0x%08x waits for lane %u, which has exited", m, l);
      }
      all = o->state == AT_WARP && o->mask == m;
    }
    if (!all) continue;
    for (unsigned l = 0; l < 32; ++l)
      if ((m >> l) & 1u) fs[base + l].state = READY;
    released = true;
  }
  return released;
}

// Run every thread of the current block until all have exited. Warp by warp, in the order
// their first thread appears in `order`: each warp runs (its shuffles included) until every
// one of its threads waits at __syncthreads() or has exited, before the next warp starts,
// so one warp can get arbitrarily far ahead of another, as on a GPU; a missing barrier
// between two uses of shared memory then shows as a wrong result in some order.
static void run_block(const std::vector<unsigned>& order) {
  const unsigned n = rt.nthreads;
  Fiber* fs = rt.fibers;
  for (unsigned i = 0; i < n; ++i) start_fiber(&fs[i], i);
  const unsigned nwarps = (n + 31) / 32;
  std::vector<std::vector<unsigned>> lanes(nwarps);
  std::vector<unsigned> warps;
  for (unsigned k = 0; k < n; ++k) {
    const unsigned w = order[k] >> 5;
    if (lanes[w].empty()) warps.push_back(w);
    lanes[w].push_back(order[k]);
  }
  for (;;) {
    for (unsigned w : warps) {
      do {
        for (unsigned i : lanes[w]) {
          Fiber* f = &fs[i];
          if (f->state != READY) continue;
          rt.cur = f;
          gpugd_emu_switch(&rt.sched_sp, f->sp);
        }
        rt.cur = nullptr;
      } while (release_warp(w));
    }
    rt.cur = nullptr;
    unsigned done = 0, at_barrier = 0, at_warp = 0;
    for (unsigned i = 0; i < n; ++i) {
      done += fs[i].state == DONE;
      at_barrier += fs[i].state == AT_BARRIER;
      at_warp += fs[i].state == AT_WARP;
    }
    if (done == n) return;
    bool released = false;
    for (unsigned w = 0; w < nwarps; ++w) released |= release_warp(w);
    if (!released && at_warp == 0 && at_barrier > 0) {
      const Fiber* first = nullptr;
      for (unsigned i = 0; i < n; ++i) {
        Fiber* f = &fs[i];
        if (f->state != AT_BARRIER) continue;
        if (first == nullptr) {
          first = f;
        } else if (f->site != first->site) {
          rt.cur = f;
          fail("divergent __syncthreads(): this thread waits at line %ld, thread (%u,%u,%u) "
               "at line %ld", reinterpret_cast<long>(f->site), first->tid.x, first->tid.y,
               first->tid.z, reinterpret_cast<long>(first->site));
        }
      }
      if (done > 0) {  // undefined on a GPU: every thread of the block must reach it
        rt.cur = const_cast<Fiber*>(first);
        fail("__syncthreads() at line %ld reached while %u of the block's %u threads have "
             "exited", reinterpret_cast<long>(first->site), done, n);
      }
      for (unsigned i = 0; i < n; ++i)
        if (fs[i].state == AT_BARRIER) fs[i].state = READY;
      released = true;
    }
    if (!released) {
      for (unsigned i = 0; i < n; ++i)
        if (fs[i].state != DONE) {
          rt.cur = &fs[i];
          break;
        }
      fail("deadlock: %u threads at __syncthreads(), %u in warp operations, %u exited "
           "(this thread is %s)",
           at_barrier, at_warp, done, state_name(rt.cur->state));
    }
  }
}

static void on_fault(int sig, siginfo_t* si, void*) {
  fault_address = si->si_addr;
  const Fiber* f = rt.cur;
  snprintf(rt.message, sizeof rt.message,
           "%s at address %p in block (%u,%u,%u) thread (%u,%u,%u)",
           sig == SIGBUS ? "bus error" : "invalid memory access", si->si_addr, rt.block_idx.x,
           rt.block_idx.y, rt.block_idx.z, f ? f->tid.x : 0u, f ? f->tid.y : 0u,
           f ? f->tid.z : 0u);
  siglongjmp(rt.escape, 2);
}

static std::vector<unsigned> ordering(unsigned n, int order, std::mt19937_64& rng) {
  std::vector<unsigned> v(n);
  for (unsigned i = 0; i < n; ++i) v[i] = order == 1 ? n - 1 - i : i;
  if (order == 2) std::shuffle(v.begin(), v.end(), rng);
  return v;
}

// ------------------------------------------------------------------ parameter lists
enum Kind : int { K_POINTER = 0, K_SIGNED = 1, K_UNSIGNED = 2, K_FLOAT = 3, K_BOOL = 4, K_OTHER = 5 };

struct ParamInfo {
  int size;
  int kind;
  int pointee_const;
  const char* pointee;  // NumPy dtype name of what a pointer points to ("void", "?")
};

template <typename T>
struct Name {
  static const char* get() { return "?"; }
};
#define GPUGD_EMU_NAME(T, S) \
  template <>                \
  struct Name<T> {           \
    static const char* get() { return S; } \
  };
GPUGD_EMU_NAME(void, "void")
GPUGD_EMU_NAME(float, "float32")
GPUGD_EMU_NAME(double, "float64")
GPUGD_EMU_NAME(gpugd::f16_t, "float16")
GPUGD_EMU_NAME(gpugd::bf16_t, "bfloat16")
GPUGD_EMU_NAME(bool, "bool")
GPUGD_EMU_NAME(char, "int8")
GPUGD_EMU_NAME(signed char, "int8")
GPUGD_EMU_NAME(unsigned char, "uint8")
GPUGD_EMU_NAME(short, "int16")
GPUGD_EMU_NAME(unsigned short, "uint16")
GPUGD_EMU_NAME(int, "int32")
GPUGD_EMU_NAME(unsigned, "uint32")
GPUGD_EMU_NAME(long, "int64")
GPUGD_EMU_NAME(unsigned long, "uint64")
GPUGD_EMU_NAME(long long, "int64")
GPUGD_EMU_NAME(unsigned long long, "uint64")
#undef GPUGD_EMU_NAME

template <typename T>
struct Info {
  static ParamInfo get() {
    int kind = K_OTHER;
    if (std::is_same<T, bool>::value)
      kind = K_BOOL;
    else if (std::is_floating_point<T>::value)
      kind = K_FLOAT;
    else if (std::is_integral<T>::value)
      kind = std::is_signed<T>::value ? K_SIGNED : K_UNSIGNED;
    return ParamInfo{static_cast<int>(sizeof(T)), kind, 0, nullptr};
  }
};
template <typename T>
struct Info<T*> {
  static ParamInfo get() {
    typedef typename std::remove_cv<T>::type U;
    return ParamInfo{static_cast<int>(sizeof(T*)), K_POINTER, std::is_const<T>::value ? 1 : 0,
                     Name<U>::get()};
  }
};

template <typename F>
struct Sig;
template <typename... A>
struct Sig<void (*)(A...)> {
  static constexpr int count = sizeof...(A);
  template <void (*K)(A...), size_t... I>
  static void call_impl(void** a, std::index_sequence<I...>) {
    (void)a;
    K(*static_cast<A*>(a[I])...);
  }
  template <void (*K)(A...)>
  static void call(void** a) {
    call_impl<K>(a, std::index_sequence_for<A...>{});
  }
  static void describe(ParamInfo* out) {
    const ParamInfo all[sizeof...(A) + 1] = {Info<A>::get()..., ParamInfo{0, 0, 0, nullptr}};
    for (size_t i = 0; i < sizeof...(A); ++i) out[i] = all[i];
  }
};

struct Entry {
  const char* name;
  int nparams;
  void (*describe)(ParamInfo*);
  void (*thunk)(void**);
};

}  // namespace gpugd_emu

#define GPUGD_EMU_KERNEL(f)                                               \
  ::gpugd_emu::Entry{#f, ::gpugd_emu::Sig<decltype(&f)>::count,           \
                     &::gpugd_emu::Sig<decltype(&f)>::describe,           \
                     &::gpugd_emu::Sig<decltype(&f)>::template call<&f>},

#define GPUGD_EMU_EXPORT extern "C" __attribute__((visibility("default")))

#define GPUGD_EMU_TABLE(...)                                                                   \
  namespace gpugd_emu {                                                                        \
  static const Entry table[] = {__VA_ARGS__ Entry{nullptr, 0, nullptr, nullptr}};              \
  static const int table_size = sizeof(table) / sizeof(table[0]) - 1;                         \
  }                                                                                            \
  GPUGD_EMU_EXPORT int gpugd_emu_count() { return ::gpugd_emu::table_size; }                   \
  GPUGD_EMU_EXPORT const char* gpugd_emu_name(int k) { return ::gpugd_emu::table[k].name; }    \
  GPUGD_EMU_EXPORT int gpugd_emu_nparams(int k) { return ::gpugd_emu::table[k].nparams; }      \
  GPUGD_EMU_EXPORT void gpugd_emu_params(int k, ::gpugd_emu::ParamInfo* out) {                 \
    ::gpugd_emu::table[k].describe(out);                                                       \
  }                                                                                            \
  GPUGD_EMU_EXPORT unsigned long long gpugd_emu_fault_address() {                              \
    return reinterpret_cast<unsigned long long>(::gpugd_emu::fault_address);                   \
  }                                                                                            \
  GPUGD_EMU_EXPORT unsigned long long gpugd_emu_shared_bytes() {                               \
    return static_cast<unsigned long long>(__stop_gpugd_emu_shared - __start_gpugd_emu_shared); \
  }                                                                                            \
  GPUGD_EMU_EXPORT void gpugd_emu_add_shared(unsigned long long addr, unsigned long long bytes) { \
    ::gpugd_emu::shared_regions.emplace_back(reinterpret_cast<unsigned char*>(addr), bytes);   \
  }                                                                                            \
  GPUGD_EMU_EXPORT int gpugd_emu_launch(int k, const unsigned* grid, const unsigned* block,     \
                                        void** args, int order, unsigned long long seed,       \
                                        char* err, int errlen) {                               \
    return ::gpugd_emu::launch(::gpugd_emu::table[k].thunk, grid, block, args, order, seed,    \
                               err, errlen);                                                   \
  }

namespace gpugd_emu {

// Run one launch synchronously. order: 0 in index order, 1 reversed, 2 shuffled by seed
// (blocks and the threads within each block). Returns 0, or 1 (misuse: deadlock, divergent
// barrier, bad mask) / 2 (memory fault) with the message in err.
static int launch(void (*thunk)(void**), const unsigned* grid, const unsigned* block,
                  void** args, int order, unsigned long long seed, char* err, int errlen) {
  const unsigned nthreads = block[0] * block[1] * block[2];
  if (launch_depth != 0) {
    snprintf(err, errlen, "a launch from inside a kernel (dynamic parallelism) is not emulated");
    return 1;
  }
  ensure_stacks(nthreads);
  if (stacks.count < nthreads) {
    snprintf(err, errlen, "could not map %u fiber stacks", nthreads);
    return 1;
  }
  if (fiber_store.size() < nthreads) fiber_store.resize(nthreads);
  rt.fibers = fiber_store.data();
  rt.nthreads = nthreads;
  rt.cur = nullptr;
  rt.thunk = thunk;
  rt.args = args;
  rt.grid_dim = dim3{grid[0], grid[1], grid[2]};
  rt.block_dim = dim3{block[0], block[1], block[2]};
  rt.message[0] = 0;
  fault_address = nullptr;
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = fiber_store[i];
    f.linear = i;
    f.tid = uint3{i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
  }

  // Faults end the launch, not the process: an alternate signal stack (a fiber may have
  // overflowed its own) and handlers for SIGSEGV/SIGBUS, restored afterwards.
  static unsigned char altstack[64 * 1024];
  stack_t ss{}, old_ss{};
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  sigaltstack(&ss, &old_ss);
  struct sigaction sa {}, old_segv{}, old_bus{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);

  ++launch_depth;
  const int rc = sigsetjmp(rt.escape, 1);
  if (rc == 0) {
    std::mt19937_64 rng(seed);
    const unsigned long long nblocks =
        static_cast<unsigned long long>(grid[0]) * grid[1] * grid[2];
    std::vector<unsigned long long> blocks(nblocks);
    for (unsigned long long i = 0; i < nblocks; ++i) blocks[i] = order == 1 ? nblocks - 1 - i : i;
    if (order == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
    const std::vector<unsigned> threads = ordering(nthreads, order, rng);
    const size_t shared = __stop_gpugd_emu_shared - __start_gpugd_emu_shared;
    for (unsigned long long b : blocks) {
      rt.block_idx = uint3{static_cast<unsigned>(b % grid[0]),
                           static_cast<unsigned>((b / grid[0]) % grid[1]),
                           static_cast<unsigned>(b / (static_cast<unsigned long long>(grid[0]) *
                                                      grid[1]))};
      // shared memory is uninitialised on a GPU: poison it (NaN in every float format)
      if (shared) std::memset(__start_gpugd_emu_shared, 0xFF, shared);
      for (const auto& r : shared_regions) std::memset(r.first, 0xFF, r.second);
      run_block(threads);
    }
  }
  --launch_depth;
  sigaction(SIGSEGV, &old_segv, nullptr);
  sigaction(SIGBUS, &old_bus, nullptr);
  sigaltstack(&old_ss, nullptr);
  rt.cur = nullptr;
  if (rc != 0) snprintf(err, errlen, "%s", rt.message);
  return rc;
}

}  // namespace gpugd_emu
