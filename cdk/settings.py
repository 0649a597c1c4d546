"""Deployment settings: every context key, read once in ``cdk/app.py`` and validated here.

Each section is a frozen dataclass that validates in ``__post_init__``; every error is a
``ContextError`` whose message names the context key, so ``cdk synth`` can print it without a trace.
Values come from ``cdk.json`` (JSON types) or ``-c key=value`` (strings); both are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cdk.components.images import HF_CPU_TABLE_PATH, ImageTable, load_table
from cdk.context_reader import ContextReader
from cdk.endpoint_modes import (
    COMPONENTS,
    MODE_KEYS,
    MODES,
    SERVERLESS,
    VARIANT,
    AdapterComponent,
    InferenceComponentSettings,
    ServerlessSettings,
    base_component_name,
    package_bytes_for,
    serverless_fit,
)
from cdk.errors import ContextError
from cdk.errors import in_range as _in_range
from cdk.errors import require as _require
from cdk.metrics_settings import AlarmSettings, check_alarms_can_fire, check_handler_setting, check_namespace
from cdk.model_data import ModelData, parse_model_data
from cdk.network_isolation import BASE_OPTION, NetworkIsolation, decide, package_options
from cdk.network_isolation import SETTINGS as NETWORK_ISOLATION
from lora_endpoint.contract import metrics as handler_metrics
from lora_endpoint.contract import settings as handler_config

__all__ = ["AlarmSettings", "ContextError", "DeploymentSettings", "known_keys"]

# CUDA 13 (the pinned LMI image) supports compute capability 7.5+: T4, A10G, L4, L40S, A100, H100, B200.
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "g7e", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200")
INSTANCE_TYPE = re.compile(r"^ml\.(?P<family>[a-z0-9-]+)\.(?P<size>(?:\d+)?xlarge|metal)$")
ENDPOINT_NAME = re.compile(r"^[a-z0-9](-*[a-z0-9]){0,62}$")
STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
ACCOUNT = re.compile(r"^\d{12}$")
SCALING_METRICS = ("concurrency", "invocations")
API_AUTH_MODES = ("iam", "api_keys")
REMOVAL_POLICIES = ("retain", "destroy")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)


def instance_family(instance_type: str) -> str:
    """``ml.g5.2xlarge`` -> ``g5``; ``ContextError`` on anything the GPU image cannot run on."""
    match = INSTANCE_TYPE.match(instance_type)
    _require(match is not None, "instance_type", f"must look like ml.<family>.<size>, got {instance_type!r}")
    assert match is not None
    family = match.group("family")
    _require(
        family in GPU_FAMILIES,
        "instance_type",
        f"unknown instance type family {family!r} in {instance_type!r}; the CUDA 13 LMI image runs on "
        f"{', '.join(GPU_FAMILIES)}",
    )
    return family


def instance_vcpus(instance_type: str) -> int:
    """vCPUs of a GPU instance, from its size (xlarge = 4, Nxlarge = 4 N, as in every family above)."""
    size = instance_type.rsplit(".", 1)[1]
    if size == "metal":
        return 96
    return 4 * int(size.removesuffix("xlarge") or 1)


def instance_gpus(instance_type: str) -> int:
    """GPUs of an instance type (the per-device metrics are summed across GPUs)."""
    family = instance_family(instance_type)
    size = instance_type.rsplit(".", 1)[1]
    if family.startswith("p") and size != "4xlarge":
        return 8
    return {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8, "metal": 8}.get(size, 1)


@dataclass(frozen=True)
class EndpointSettings:
    """The SageMaker model, endpoint config and endpoint."""

    endpoint_name: str = "lora-endpoint"
    model_data: ModelData = field(default_factory=lambda: parse_model_data(""))
    base_model: str = ""
    handler_env: Mapping[str, str] = field(default_factory=dict)
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = 1
    model_data_download_timeout_s: int = 1800
    startup_health_check_timeout_s: int = 1800
    vpc_subnet_ids: tuple[str, ...] = ()
    vpc_security_group_ids: tuple[str, ...] = ()
    data_capture_percent: int = 0
    deploy_bake_s: int = 600
    network_isolation: str = "auto"
    mode: str = VARIANT
    """``endpoint_mode``: ``variant``, ``inference_components`` or ``serverless`` (see ``cdk.endpoint_modes``)."""
    metrics_namespace: str = handler_metrics.DEFAULT_NAMESPACE
    """The CloudWatch namespace of the handler's own (EMF) metrics, which the dashboard and alarms read."""
    effective_base_model: str = field(init=False)
    """The base the handler loads: the package's own ``option.base_model`` (DJL options win over the
    environment; only local packages can be read at synth), else ``LORA_BASE_MODEL``; empty means ``base/``."""
    isolation: NetworkIsolation = field(init=False)
    """The resolved ``network_isolation``: on unless the base model needs the network (or it was set false)."""

    def __post_init__(self) -> None:
        _require(
            ENDPOINT_NAME.match(self.endpoint_name) is not None,
            "endpoint_name",
            f"must be 1-63 lower-case letters, digits and hyphens, got {self.endpoint_name!r}",
        )
        _require(self.mode in MODES, "endpoint_mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == COMPONENTS:
            _require(len(base_component_name(self.endpoint_name)) <= 63, "endpoint_name",
                     f"at most 58 characters with endpoint_mode={COMPONENTS} (the base inference component is "
                     f"named {base_component_name(self.endpoint_name)!r}, at most 63)")
        if self.mode == SERVERLESS:
            _require(not self.vpc_subnet_ids, "vpc_subnet_ids",
                     "Serverless Inference does not support VPC configuration (AWS's feature exclusions)")
        why = ("Serverless Inference does not support it (AWS's feature exclusions)" if self.mode == SERVERLESS
               else "this stack does not set it up for inference components")
        _require(self.mode == VARIANT or self.data_capture_percent == 0, "data_capture_percent",
                 f"data capture works with endpoint_mode={VARIANT} only: {why}")
        instance_family(self.instance_type)
        _in_range("instance_count", self.instance_count, 1, 100)
        _in_range("model_data_download_timeout_s", self.model_data_download_timeout_s, 60, 3600)
        _in_range("startup_health_check_timeout_s", self.startup_health_check_timeout_s, 60, 3600)
        _require(
            bool(self.vpc_subnet_ids) == bool(self.vpc_security_group_ids),
            "vpc_subnet_ids" if not self.vpc_subnet_ids else "vpc_security_group_ids",
            "vpc_subnet_ids and vpc_security_group_ids must be given together",
        )
        _in_range("data_capture_percent", self.data_capture_percent, 0, 100)
        _in_range("deploy_bake_s", self.deploy_bake_s, 0, 3600)
        _require(self.network_isolation in NETWORK_ISOLATION, "network_isolation",
                 f"must be one of {', '.join(NETWORK_ISOLATION)}, got {self.network_isolation!r}")
        check_namespace(self.metrics_namespace)
        options = package_options(self.model_data)  # read once: an archive is streamed to find them
        _check_one_owner(self.handler_env, options)
        # Frozen dataclass: derived fields are set once here.
        base = ((options or {}).get(BASE_OPTION, "") or self.handler_env.get(handler_config.ENV_BASE_MODEL, "")
                or self.base_model)
        if base.startswith("s3://"):
            _require(
                len(base[5:].split("/", 1)) == 2 and base[5:].split("/", 1)[1] != "",
                "base_model",
                f"an s3:// base model needs a key prefix after the bucket, got {base!r}",
            )
        object.__setattr__(self, "effective_base_model", base)
        if self.mode == SERVERLESS:
            _require(self.network_isolation != "true", "network_isolation",
                     "cannot be true with endpoint_mode=serverless: Serverless Inference does not support network "
                     "isolation (AWS's feature exclusions)")
            object.__setattr__(self, "isolation", NetworkIsolation(
                False, "SageMaker Serverless Inference does not support network isolation"))
            return
        try:
            object.__setattr__(self, "isolation", decide(self.network_isolation, base))
        except ValueError as err:
            raise ContextError("network_isolation", str(err)) from None

    @property
    def container_env(self) -> dict[str, str]:
        """The model container's environment: the handler settings plus what the stack owns (the metrics'
        ``Endpoint`` dimension is the endpoint's name and the namespace ``metrics_namespace``, in every mode,
        so the dashboard and alarms find them)."""
        return {**self.handler_env, handler_config.ENV_METRICS_ENDPOINT: self.endpoint_name,
                handler_config.ENV_METRICS_NAMESPACE: self.metrics_namespace}

    @property
    def handler_settings(self) -> handler_config.HandlerSettings:
        """The handler's settings as the container will parse them."""
        return handler_config.HandlerSettings.from_env(self.container_env)


@dataclass(frozen=True)
class ScalingSettings:
    """Target tracking on the production variant."""

    min_capacity: int = 1
    max_capacity: int = 2
    scaling_metric: str = "concurrency"
    scaling_target: float = 4.0
    scale_in_cooldown_s: int = 600
    scale_out_cooldown_s: int = 120

    def __post_init__(self) -> None:
        _in_range("min_capacity", self.min_capacity, 0, 100)  # 0 only with scale to zero: see _check_mode
        _in_range("max_capacity", self.max_capacity, 1, 100)
        _require(
            self.min_capacity <= self.max_capacity,
            "min_capacity",
            f"min_capacity ({self.min_capacity}) must not exceed max_capacity ({self.max_capacity})",
        )
        _require(
            self.scaling_metric in SCALING_METRICS,
            "scaling_metric",
            f"must be one of {', '.join(SCALING_METRICS)}, got {self.scaling_metric!r}",
        )
        _require(self.scaling_target > 0, "scaling_target", f"must be positive, got {self.scaling_target}")
        _in_range("scale_in_cooldown_s", self.scale_in_cooldown_s, 0, 3600)
        _in_range("scale_out_cooldown_s", self.scale_out_cooldown_s, 0, 3600)


@dataclass(frozen=True)
class ApiSettings:
    """The REST API in front of the endpoint."""

    auth: str = "iam"
    stage_name: str = "v1"
    timeout_s: int = 29
    throttle_rate: float = 10.0
    throttle_burst: int = 20
    quota_per_day: int = 10_000

    def __post_init__(self) -> None:
        _require(
            self.auth in API_AUTH_MODES,
            "api_auth",
            f"must be one of {', '.join(API_AUTH_MODES)}, got {self.auth!r}",
        )
        _require(re.match(r"^[A-Za-z0-9_]{1,128}$", self.stage_name) is not None, "api_stage",
                 f"must be letters, digits or underscores, got {self.stage_name!r}")
        _in_range("api_timeout_s", self.timeout_s, 1, 300)
        _require(self.throttle_rate > 0, "api_throttle_rate", "must be positive")
        _in_range("api_throttle_burst", self.throttle_burst, 1, 5000)
        _require(self.quota_per_day > 0, "api_quota_per_day", "must be positive")


@dataclass(frozen=True)
class DeploymentSettings:
    """Everything the stack needs, parsed once from CDK context."""

    stack_name: str = "LoraEndpoint"
    account: str = ""
    """Empty: environment-agnostic account, resolved from the credentials at deploy time."""
    region: str = "us-east-1"
    kms_key_arn: str = ""
    removal_policy: str = "retain"
    log_retention_days: int = 90
    noncurrent_version_days: int = 30
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    alarms: AlarmSettings = field(default_factory=AlarmSettings)
    components: InferenceComponentSettings = field(default_factory=InferenceComponentSettings)
    serverless: ServerlessSettings = field(default_factory=ServerlessSettings)
    package_bytes: int | None = None
    """The package's unpacked size (serverless mode only): from a local package's manifest or ``model_size_mb``."""
    package_source: str = ""
    """Where ``package_bytes`` came from, for messages."""
    given: frozenset[str] = frozenset()
    """The mode-specific context keys that were set (each is refused outside its modes)."""

    def __post_init__(self) -> None:
        _require(STACK_NAME.match(self.stack_name) is not None, "stack_name", f"invalid: {self.stack_name!r}")
        _require(self.account == "" or ACCOUNT.match(self.account) is not None, "account",
                 f"must be a 12-digit account id, got {self.account!r}")
        table = self.image
        _require(
            self.region in table.registries,
            "region",
            f"the {table.framework} image table ({table.repository}:{table.tag}) has no registry in "
            f"{self.region!r}; regenerate it from sagemaker-core's image config or pick another region",
        )
        _require(
            self.kms_key_arn == "" or (self.kms_key_arn.startswith("arn:") and ":key/" in self.kms_key_arn),
            "kms_key_arn",
            f"must be a KMS key ARN (arn:...:key/...), got {self.kms_key_arn!r}",
        )
        _require(self.removal_policy in REMOVAL_POLICIES, "removal_policy",
                 f"must be one of {', '.join(REMOVAL_POLICIES)}, got {self.removal_policy!r}")
        _require(self.log_retention_days in LOG_RETENTION_DAYS, "log_retention_days",
                 f"must be one of CloudWatch's retentions {LOG_RETENTION_DAYS}, got {self.log_retention_days}")
        _in_range("noncurrent_version_days", self.noncurrent_version_days, 1, 3650)
        _require(
            self.endpoint.data_capture_percent == 0 or self.kms_key_arn != "",
            "data_capture_percent",
            "data capture stores callers' prompts and responses (customer data) in S3: set kms_key_arn to the "
            "customer KMS key that encrypts them and decides who may read them",
        )
        _require(
            self.scaling.min_capacity <= self.endpoint.instance_count <= self.scaling.max_capacity,
            "instance_count",
            f"must lie within min_capacity..max_capacity ({self.scaling.min_capacity}.."
            f"{self.scaling.max_capacity}), got {self.endpoint.instance_count}",
        )
        budget = float(self.endpoint.handler_env.get(handler_config.ENV_TIME_BUDGET_S, "0"))
        _require(
            budget < self.api.timeout_s,
            "handler",
            f"time_budget_s ({budget:g}) must be below api_timeout_s ({self.api.timeout_s}) so a caller "
            "gets the partial answer, not a gateway timeout",
        )
        check_alarms_can_fire(self.alarms, self.endpoint.handler_settings)
        self._check_mode()

    def _check_mode(self) -> None:
        """Refuse what the endpoint mode cannot do, naming the key: each combination AWS (or this stack) rejects."""
        mode = self.endpoint.mode
        _require(not self.components.scale_to_zero or mode == COMPONENTS, "scale_to_zero",
                 f"needs endpoint_mode={COMPONENTS}: SageMaker scales real-time endpoints to zero only through "
                 f"inference components (endpoint_mode={SERVERLESS} scales to zero by itself)")
        for key in sorted(self.given):
            modes = MODE_KEYS[key]
            _require(mode in modes, key, f"applies to endpoint_mode={' or '.join(modes)} only, not {mode}")
        if self.scaling.min_capacity == 0:
            _require(mode == COMPONENTS and self.components.scale_to_zero, "min_capacity",
                     f"0 instances needs endpoint_mode={COMPONENTS} with scale_to_zero=true (the alarm and step "
                     "policy that bring a copy back)")
        if mode == COMPONENTS:
            _require(not self.components.scale_to_zero or self.scaling.min_capacity == 0, "min_capacity",
                     f"scale_to_zero=true scales instances down to 0: min_capacity must be 0, got "
                     f"{self.scaling.min_capacity}")
            gpus = instance_gpus(self.endpoint.instance_type)
            _require(self.components.accelerators <= gpus, "ic_accelerators",
                     f"{self.endpoint.instance_type} has {gpus} GPU(s), a copy cannot reserve "
                     f"{self.components.accelerators}")
        if mode == SERVERLESS:
            _require(self.package_bytes is not None, "model_size_mb",
                     "endpoint_mode=serverless checks the package against Serverless Inference's limits (5 GB disk, "
                     "at most 6144 MB memory); model_data is in S3, so give its unpacked size in MB (manifest.json's "
                     "file sizes added up)")
            assert self.package_bytes is not None
            serverless_fit(self.package_bytes, self.serverless.memory_mb, self.package_source)

    @property
    def image(self) -> ImageTable:
        """The pinned image table of this mode: LMI on GPUs, the Hugging Face CPU container for serverless."""
        return load_table(HF_CPU_TABLE_PATH) if self.endpoint.mode == SERVERLESS else load_table()

    @property
    def image_uri(self) -> str:
        """The pinned image in this stack's region."""
        return self.image.uri(self.region)

    @property
    def base_component(self) -> str:
        """The base inference component's name (``inference_components`` mode)."""
        return base_component_name(self.endpoint.endpoint_name)

    @classmethod
    def from_context(cls, app: Any) -> DeploymentSettings:
        """Read every key from ``app.node`` context (missing keys take their defaults)."""
        return cls.from_mapping(app.node.get_all_context())

    @classmethod
    def from_mapping(cls, ctx: Mapping[str, Any]) -> DeploymentSettings:
        """Build from a plain mapping of context keys (what tests pass)."""
        return _build(ContextReader(ctx))


def _build(read: ContextReader) -> DeploymentSettings:
    """Read every key through ``read``; the one place that lists the context keys and their defaults."""
    api = ApiSettings(
        auth=read.text("api_auth", "iam"),
        stage_name=read.text("api_stage", "v1"),
        timeout_s=read.integer("api_timeout_s", 29),
        throttle_rate=read.number("api_throttle_rate", 10.0),
        throttle_burst=read.integer("api_throttle_burst", 20),
        quota_per_day=read.integer("api_quota_per_day", 10_000),
    )
    endpoint = EndpointSettings(
        endpoint_name=read.text("endpoint_name", "lora-endpoint"),
        model_data=read.parsed("model_data", "", parse_model_data),
        base_model=read.text("base_model", ""),
        handler_env=_handler_env(read.mapping("handler"), read.text("base_model", ""), api.timeout_s),
        instance_type=read.text("instance_type", "ml.g5.2xlarge"),
        instance_count=read.integer("instance_count", 1),
        model_data_download_timeout_s=read.integer("model_data_download_timeout_s", 1800),
        startup_health_check_timeout_s=read.integer("startup_health_check_timeout_s", 1800),
        vpc_subnet_ids=read.strings("vpc_subnet_ids"),
        vpc_security_group_ids=read.strings("vpc_security_group_ids"),
        data_capture_percent=read.integer("data_capture_percent", 0),
        deploy_bake_s=read.integer("deploy_bake_s", 600),
        network_isolation=read.text("network_isolation", "auto").lower(),
        mode=read.text("endpoint_mode", VARIANT).lower(),
        metrics_namespace=read.text("metrics_namespace", handler_metrics.DEFAULT_NAMESPACE),
    )
    to_zero = read.boolean("scale_to_zero", False)
    scaling = ScalingSettings(
        min_capacity=read.integer("min_capacity", 0 if to_zero else 1),
        max_capacity=read.integer("max_capacity", 2),
        scaling_metric=read.text("scaling_metric", "concurrency"),
        scaling_target=read.number("scaling_target", 4.0 if read.text("scaling_metric", "") != "invocations"
                                   else 60.0),
        scale_in_cooldown_s=read.integer("scale_in_cooldown_s", 600),
        scale_out_cooldown_s=read.integer("scale_out_cooldown_s", 120),
    )
    components = InferenceComponentSettings(
        scale_to_zero=to_zero,
        copy_count=read.integer("copy_count", 1),
        min_copies=read.integer("min_copies", 0 if to_zero else 1),
        max_copies=read.integer("max_copies", scaling.max_capacity),
        accelerators=read.integer("ic_accelerators", 1),
        min_memory_mb=read.integer("ic_min_memory_mb", 1024),
        adapters=tuple(AdapterComponent(name=str(item["name"]), artifact_url=str(item["artifact_url"]))
                       for item in read.records("adapter_components", ("name", "artifact_url"))),
    )
    serverless = ServerlessSettings(
        memory_mb=read.integer("serverless_memory_mb", 6144),
        max_concurrency=read.integer("serverless_max_concurrency", 5),
        provisioned_concurrency=read.integer("serverless_provisioned_concurrency", 0),
    )
    package_bytes, package_source = package_bytes_for(endpoint.mode, endpoint.model_data,
                                                      read.integer("model_size_mb", 0))
    defaults = AlarmSettings()
    alarms = AlarmSettings(
        email=read.text("alarm_email", ""),
        **{
            name: read.number(f"alarm_{name}", getattr(defaults, name))
            for name in AlarmSettings.__dataclass_fields__
            if name != "email"
        },
    )
    return DeploymentSettings(
        stack_name=read.text("stack_name", "LoraEndpoint"),
        account=read.text("account", ""),
        region=read.text("region", "us-east-1"),
        kms_key_arn=read.text("kms_key_arn", ""),
        removal_policy=read.text("removal_policy", "retain"),
        log_retention_days=read.integer("log_retention_days", 90),
        noncurrent_version_days=read.integer("noncurrent_version_days", 30),
        endpoint=endpoint,
        scaling=scaling,
        api=api,
        alarms=alarms,
        components=components,
        serverless=serverless,
        package_bytes=package_bytes,
        package_source=package_source,
        given=frozenset(key for key in MODE_KEYS if read.given(key)),
    )


def _check_one_owner(handler_env: Mapping[str, str], options: Mapping[str, str] | None) -> None:
    """Refuse a handler setting the package fixes otherwise: its ``option.*`` wins over the environment in
    the container (DJL hands options to the handler over the environment), so the context value would be
    ignored - and for the base model, the execution role would be granted another model than the one that
    loads. Where synth cannot read the package (S3), the package's values win without a check."""
    for var, value in sorted(handler_env.items()):
        name = var.removeprefix(handler_config.ENV_PREFIX).lower()
        fixed = (options or {}).get(name)
        if fixed is None or fixed.strip().lower() == value.strip().lower():
            continue
        key = "base_model" if var == handler_config.ENV_BASE_MODEL else "handler"
        raise ContextError(key, f"{name}={value!r} would be ignored: the package's serving.properties sets "
                                f"option.{name}={fixed!r}, which wins in the container; rebuild the package with "
                                f"the value you want (lora-package build) or leave {name} out of the context")


def _handler_env(values: Mapping[str, Any], base_model: str, api_timeout_s: int) -> dict[str, str]:
    """Container environment from ``handler`` context (HandlerSettings field names), validated by the handler.

    The generation time budget defaults to 4 s under the API timeout, so a long generation returns what it
    has (``finish_reason`` ``time_limit``) before API Gateway gives up with a 504. The metrics' endpoint and
    namespace are the stack's (``EndpointSettings.container_env``): set here too, they are refused, since the
    dashboard and alarms would look for the metrics under other names.
    """
    env: dict[str, str] = {}
    for name, value in values.items():
        try:
            var = handler_config.env_var(name)
        except KeyError:
            raise ContextError("handler", f"unknown handler setting {name!r}") from None
        check_handler_setting(name)
        env[var] = str(value).lower() if isinstance(value, bool) else str(value)
    if base_model:
        env[handler_config.ENV_BASE_MODEL] = base_model
    env.setdefault(handler_config.ENV_TIME_BUDGET_S, str(max(api_timeout_s - 4, 1)))
    try:
        handler_config.HandlerSettings.from_env(env)
    except handler_config.SettingsError as err:
        raise ContextError("handler", str(err)) from None
    return dict(sorted(env.items()))


def known_keys() -> frozenset[str]:
    """Every context key this app reads (app.py warns about others, which are usually typos)."""
    reader = ContextReader({})
    _build(reader)
    return frozenset(reader.asked)
