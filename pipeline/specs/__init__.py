"""Job specs: the schema (:mod:`~pipeline.specs.schema`), loading with includes, overrides and
templating (:mod:`~pipeline.specs.loading`) and the generated reference
(:mod:`~pipeline.specs.reference`). Torch-free and Ray-free.

    from pipeline.specs import load_job
    job = load_job("jobs/demo.yaml", overrides=["generate.seeds.count=100"])
"""

from pipeline.catalog.bytegpt import ByteGPTConfig
from pipeline.catalog.dcgan import DCGANConfig
from pipeline.checks import MAX_ITEMS, MAX_SHARDS, SpecError, background_rgb, uri_scheme
from pipeline.models.text_encoder_config import TextEncoderConfig
from pipeline.specs.loading import (
                                    apply_overrides,
                                    check_date,
                                    check_run_id,
                                    deep_merge,
                                    load_job,
                                    parse_override,
                                    render_output,
                                    today,
                                    validate_job,
)
from pipeline.specs.schema import (
                                    MODEL_ARCHS,
                                    CheckpointSpec,
                                    Credentials,
                                    DataSpec,
                                    EvaluateSpec,
                                    GateSpec,
                                    GenerateScaling,
                                    GenerateSpec,
                                    JobSpec,
                                    LMSpec,
                                    PromptsSpec,
                                    SafetySpec,
                                    SeedsSpec,
                                    StorageSpec,
                                    TextSamplingSpec,
                                    TrainScaling,
                                    TrainSpec,
)

# The names of the model sections before families (specs, tests and notebooks written against them).
ModelSpec = DCGANConfig
TextModelSpec = ByteGPTConfig
TextEncoderSpec = TextEncoderConfig

__all__ = [
    "MAX_ITEMS", "MAX_SHARDS", "MODEL_ARCHS", "ByteGPTConfig", "CheckpointSpec", "Credentials", "DCGANConfig",
    "DataSpec", "EvaluateSpec", "GateSpec", "GenerateScaling", "GenerateSpec", "JobSpec", "LMSpec", "ModelSpec",
    "PromptsSpec", "SafetySpec", "SeedsSpec", "SpecError", "StorageSpec", "TextEncoderConfig", "TextEncoderSpec",
    "TextModelSpec", "TextSamplingSpec", "TrainScaling", "TrainSpec", "apply_overrides", "background_rgb",
    "check_date", "check_run_id", "deep_merge", "load_job", "parse_override", "render_output", "today",
    "uri_scheme", "validate_job",
]
