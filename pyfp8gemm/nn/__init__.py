"""FP8 training layers: DeepSeek-V3's recipe as torch modules (docs/TRAINING.md).

    pyfp8gemm.nn.Linear                 drop-in for torch.nn.Linear: FP8 forward, dgrad, wgrad
    pyfp8gemm.nn.functional.linear      the same as a function (drop-in for F.linear)
    pyfp8gemm.nn.convert(model)         swap a model's eligible nn.Linear modules, in place
"""

from pyfp8gemm.nn import functional
from pyfp8gemm.nn.modules import ConversionReport, Linear, convert, eligibility

__all__ = ["Linear", "convert", "ConversionReport", "eligibility", "functional"]
