// Least squares over TCP: one process per worker, started by the launcher,
//
//   scripts/ecopt-launch -n 3 -- ./tcp_least_squares
//
// Each process reads its rank, the world size and rank 0's address from the
// environment (tcp_options::from_environment); the worker
// (least_squares_worker.hpp) is the same as mpi_least_squares'.
#include <cstdio>
#include <exception>

#include "ecopt/transports/tcp_transport.hpp"
#include "least_squares_worker.hpp"

int main() {
  try {
    ecopt::tcp_transport transport(ecopt::tcp_options::from_environment());
    return run_least_squares_worker(transport, "tcp_least_squares");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tcp_least_squares: %s\n", e.what());
    return 1;
  }
}
