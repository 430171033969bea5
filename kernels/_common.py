"""Names shared by every kernel module (Liger's ``ops/utils.py`` role): keep one definition here."""
import torch

# torch dtype -> the Triton/AOT signature name of a pointer to it; the dtypes the kernels serve.
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
