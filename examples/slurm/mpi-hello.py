#!/usr/bin/python3
"""An MPI job: every rank sends its host name to rank 0 and takes part in an
allreduce; rank 0 prints the world size, the sum of the ranks and the hosts."""
import socket

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
total = comm.allreduce(rank, op=MPI.SUM)
hosts = comm.gather(socket.gethostname(), root=0)
if rank == 0:
    print(f"size={comm.Get_size()} sum={total} hosts={','.join(sorted(set(hosts)))}")
