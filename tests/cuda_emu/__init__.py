"""Run the CUDA kernels of kernels/*.cu on the CPU (g++ + cuda_emu.h) to test them without a GPU."""
