// A persistent worker pool shared by every CPU kernel, so a decode step does not pay thread
// start-up per call and the thread count is set once (set_num_threads) instead of per kernel.
#pragma once
#include <cstddef>
#include <functional>

namespace kr {

// Runs fn(task, thread) for task in [0, n_tasks); the calling thread takes part as thread 0.
// Tasks are handed out dynamically, so uneven tasks balance. Calls from different threads are
// serialised; a call made from inside a task runs its tasks inline on that thread (no deadlock, no
// oversubscription), so kernels may call other kernels.
void parallel_for(size_t n_tasks, const std::function<void(size_t task, int thread)>& fn);

int num_threads();                 // threads a parallel_for may use, caller included
void set_num_threads(int n);       // n <= 0: all hardware threads

}  // namespace kr
