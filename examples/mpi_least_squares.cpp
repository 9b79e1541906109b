// Least squares under MPI: one process per worker, started by mpirun,
//
//   mpirun -np 3 ./mpi_least_squares
//
// The worker (least_squares_worker.hpp) is the same as tcp_least_squares':
// only the transport object differs. Its collectives become MPI's own
// (MPI_Allreduce, MPI_Allgatherv).
#include <cstdio>
#include <exception>

#include "ecopt/transports/mpi_transport.hpp"
#include "least_squares_worker.hpp"

int main(int argc, char** argv) {
  try {
    const ecopt::mpi_session session(&argc, &argv);
    int code = 0;
    {
      ecopt::mpi_transport transport;  // closed before MPI is finalised
      code = run_least_squares_worker(transport, "mpi_least_squares");
    }
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_least_squares: %s\n", e.what());
    return 1;
  }
}
