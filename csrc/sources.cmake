# The one source list of clipfast._C, read by CMakeLists.txt and by setup.py (glob rules, relative to
# the repository root): every C++ file always, every CUDA file when building with CUDA.
set(CLIPFAST_CPP_GLOB "csrc/*.cpp")
set(CLIPFAST_CUDA_GLOB "csrc/*.cu")
