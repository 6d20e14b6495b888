"""The ``reference`` backend: stock PyTorch composites of the ops, and the tests' oracle."""
import torch
import torch.nn.functional as F


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    # torch's function views 5-D+ inputs with .view(), which fails on some non-contiguous layouts.
    if input.dim() > 4 and not input.is_contiguous():
        input = input.contiguous()
    # torch's CPU pooling has no fp16 kernel: compute such inputs in fp32, as our kernels do.
    if input.device.type == "cpu" and input.dtype in (torch.float16, torch.bfloat16):
        return F.local_response_norm(input.float(), size, alpha, beta, k).to(input.dtype)
    return F.local_response_norm(input, size, alpha, beta, k)


def max_pool2d(input: torch.Tensor, kernel_size, stride, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    # torch's CPU max pooling has fp16 and bf16 kernels (unlike its LRN path above): no casts needed.
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                        return_indices=return_indices)


def max_pool2d_lrn(input: torch.Tensor, kernel_size, stride, padding=0, ceil_mode: bool = False, size: int = 5,
                   alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, relu: bool = False) -> torch.Tensor:
    """The composite the fused op replaces: LRN(max_pool2d(relu(x) if relu else x))."""
    if relu:
        input = torch.relu(input)
    pooled = max_pool2d(input, kernel_size, stride, padding, 1, ceil_mode)
    if pooled.dim() == 3:  # LRN wants (N, C, *): a 3-D (C, H, W) input pools and normalises as one sample
        return local_response_norm(pooled.unsqueeze(0), size, alpha, beta, k).squeeze(0)
    return local_response_norm(pooled, size, alpha, beta, k)


def inception(input: torch.Tensor, weight_1x1, bias_1x1, weight_3x3, bias_3x3, weight_5x5, bias_5x5, weight_pool,
              bias_pool, ch1x1: int) -> torch.Tensor:
    """The composite the fused Inception op replaces: four branches and a cat (see ops.inception)."""
    reduce = F.relu(F.conv2d(input, weight_1x1, bias_1x1))
    r3, r5 = weight_3x3.shape[1], weight_5x5.shape[1]
    branch1, red3, red5 = reduce.split([ch1x1, r3, r5], 1)
    branch2 = F.relu(F.conv2d(red3, weight_3x3, bias_3x3, padding=weight_3x3.shape[-1] // 2))
    branch3 = F.relu(F.conv2d(red5, weight_5x5, bias_5x5, padding=weight_5x5.shape[-1] // 2))
    branch4 = F.relu(F.conv2d(F.max_pool2d(input, 3, 1, 1), weight_pool, bias_pool))
    return torch.cat([branch1, branch2, branch3, branch4], 1)
