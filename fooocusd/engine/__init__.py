"""Models, samplers and pipelines: a job's generation settings in, pixels out."""

import logging as _logging

# With the optional fp8 extra installed, importing diffusers/transformers also imports torchao, which
# logs two harmless notices on every start (a torch deprecation about torchao's own enum, and
# diffusers 0.42 failing to import torchao's *serialised checkpoint* classes, which fooocusd never
# loads). Only those two loggers are quietened, and only below ERROR.
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
