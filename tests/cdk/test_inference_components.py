"""Inference-component mode: the endpoint config, base and adapter components, copy scaling, scale to zero,
tear-down order, grants, API routing and alarms."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template

from cdk.app import warnings
from cdk.components.inference_components import SCALE_TO_ZERO_COST
from tests.cdk.conftest import make_stack, only, resources, synth
from tests.cdk.test_api import _methods

IC_TYPE = "AWS::SageMaker::InferenceComponent"
BASE = "lora-endpoint-base"
ADAPTERS = [{"name": "sql", "artifact_url": "s3://adapter-bucket/sql/v1.tar.gz"},
            {"name": "support-v2", "artifact_url": "s3://other-bucket/a/support.tar.gz"}]
COMPONENTS = {"endpoint_mode": "inference_components", "adapter_components": ADAPTERS}
TO_ZERO = {**COMPONENTS, "scale_to_zero": True}


@pytest.fixture(scope="module")
def components() -> Template:
    return synth(COMPONENTS)


@pytest.fixture(scope="module")
def to_zero() -> Template:
    return synth(TO_ZERO)


def _components(template: Template) -> dict[str, dict[str, Any]]:
    """Inference components by their InferenceComponentName, with their logical id under ``_id``."""
    return {r["Properties"]["InferenceComponentName"]: {**r, "_id": k} for k, r in resources(template, IC_TYPE).items()}


def _logical_id(template: Template, type_name: str) -> str:
    (logical_id,) = resources(template, type_name)
    return logical_id


def _depends_on(template: Template) -> dict[str, set[str]]:
    """Logical id -> what CloudFormation makes it wait for (DependsOn, Ref, GetAtt): it is deleted before those."""
    found: dict[str, set[str]] = {}
    for logical_id, resource in template.to_json()["Resources"].items():
        text = json.dumps(resource.get("Properties", {}))
        refs = {other for other in template.to_json()["Resources"]
                if f'"Ref": "{other}"' in text or f'["{other}",' in text}
        found[logical_id] = set(resource.get("DependsOn", [])) | refs
    return found


def test_endpoint_config_names_no_model_and_scales_instances(components: Template) -> None:
    config = only(components, "AWS::SageMaker::EndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert "ModelName" not in variant
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 1, "MaxInstanceCount": 2}
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert variant["InitialInstanceCount"] == 1
    # The startup timeouts belong to the components here.
    assert "ModelDataDownloadTimeoutInSeconds" not in variant
    # The config says which role SageMaker uses, and isolates the containers as the model does.
    role = config["ExecutionRoleArn"]["Fn::GetAtt"][0]
    assert role.startswith("EndpointExecutionRole")
    assert config["EnableNetworkIsolation"] is True
    assert "DataCaptureConfig" not in config
    # Components update by their own rolling policy: no blue/green on the endpoint.
    assert "DeploymentConfig" not in only(components, "AWS::SageMaker::Endpoint")


def test_base_component_runs_the_package(components: Template) -> None:
    base = _components(components)[BASE]["Properties"]
    model = _logical_id(components, "AWS::SageMaker::Model")
    assert base["EndpointName"] == {"Fn::GetAtt": [_logical_id(components, "AWS::SageMaker::Endpoint"),
                                                   "EndpointName"]}
    assert base["VariantName"] == "AllTraffic"
    spec = base["Specification"]
    assert spec["ModelName"] == {"Fn::GetAtt": [model, "ModelName"]}
    assert spec["ComputeResourceRequirements"] == {"NumberOfAcceleratorDevicesRequired": 1,
                                                   "MinMemoryRequiredInMb": 1024}
    assert spec["StartupParameters"] == {"ModelDataDownloadTimeoutInSeconds": 1800,
                                         "ContainerStartupHealthCheckTimeoutInSeconds": 1800}
    assert base["RuntimeConfig"] == {"CopyCount": 1}
    rolling = base["DeploymentConfig"]["RollingUpdatePolicy"]
    assert rolling["MaximumBatchSize"] == {"Type": "COPY_COUNT", "Value": 1}
    assert rolling["WaitIntervalInSeconds"] == 600
    rollback = [a["AlarmName"]["Ref"] for a in base["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]]
    assert {ref.split("Alarms")[1][:8] for ref in rollback} == {"Error5Xx", "ModelLat"}


def test_compute_and_copies_come_from_context() -> None:
    template = synth({"endpoint_mode": "inference_components", "instance_type": "ml.g5.12xlarge",
                      "ic_accelerators": 2, "ic_min_memory_mb": 16384, "copy_count": 2, "max_copies": 4})
    base = _components(template)[BASE]["Properties"]
    assert base["Specification"]["ComputeResourceRequirements"] == {
        "NumberOfAcceleratorDevicesRequired": 2, "MinMemoryRequiredInMb": 16384}
    assert base["RuntimeConfig"] == {"CopyCount": 2}
    target = only(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)


def test_one_adapter_component_per_adapter_without_compute(components: Template) -> None:
    found = _components(components)
    assert set(found) == {BASE, "sql", "support-v2"}
    for adapter in ADAPTERS:
        component = found[adapter["name"]]
        props = component["Properties"]
        assert props["Specification"] == {"BaseInferenceComponentName": BASE,
                                          "Container": {"ArtifactUrl": adapter["artifact_url"]}}
        assert "RuntimeConfig" not in props
        assert found[BASE]["_id"] in component["DependsOn"]


def test_tear_down_deletes_components_before_the_endpoint(components: Template) -> None:
    # CloudFormation deletes a resource before everything it waits for: adapters, then the base, then the
    # endpoint (which SageMaker refuses to delete while it has components).
    deps = _depends_on(components)
    found = _components(components)
    endpoint = _logical_id(components, "AWS::SageMaker::Endpoint")
    assert endpoint in deps[found[BASE]["_id"]]
    assert _logical_id(components, "AWS::SageMaker::Model") in deps[found[BASE]["_id"]]
    for name in ("sql", "support-v2"):
        assert found[BASE]["_id"] in deps[found[name]["_id"]]
    # The scaling target is deregistered before its component goes.
    target = _logical_id(components, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert found[BASE]["_id"] in deps[target]


def test_copy_count_tracks_concurrency_per_copy(components: Template) -> None:
    target = only(components, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ResourceId"] == f"inference-component/{BASE}"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
    (policy,) = resources(components, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    config = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"}
    assert config["TargetValue"] == 4
    # Without scale to zero: no step policy, no "no capacity" alarm.
    assert not [k for k in resources(components, "AWS::CloudWatch::Alarm") if "NoCapacity" in k]


def test_invocations_per_copy_on_request() -> None:
    template = synth({"endpoint_mode": "inference_components", "scaling_metric": "invocations"})
    (policy,) = resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    assert policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"}


def test_scale_to_zero_goes_to_zero_instances_and_copies(to_zero: Template) -> None:
    (variant,) = only(to_zero, "AWS::SageMaker::EndpointConfig")["ProductionVariants"]
    assert variant["ManagedInstanceScaling"]["MinInstanceCount"] == 0
    assert variant["InitialInstanceCount"] == 1
    target = only(to_zero, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0
    # Created with one copy all the same: AWS refuses CopyCount 0 at create.
    assert _components(to_zero)[BASE]["Properties"]["RuntimeConfig"] == {"CopyCount": 1}


def test_scale_from_zero_steps_up_on_no_capacity_alarms(to_zero: Template) -> None:
    policies = {p["Properties"]["PolicyType"]: (k, p["Properties"])
                for k, p in resources(to_zero, "AWS::ApplicationAutoScaling::ScalingPolicy").items()}
    assert set(policies) == {"TargetTrackingScaling", "StepScaling"}
    step_id, step = policies["StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepScalingPolicyConfiguration"]["MetricAggregationType"] == "Maximum"
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    alarms = {a["Properties"]["Dimensions"][0]["Value"]: a["Properties"]
              for k, a in resources(to_zero, "AWS::CloudWatch::Alarm").items() if "NoCapacity" in k}
    # Requests for the base and for each adapter component all need a base copy.
    assert set(alarms) == {BASE, "sql", "support-v2"}
    for alarm in alarms.values():
        assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SageMaker", "NoCapacityInvocationFailures")
        assert alarm["Dimensions"][0]["Name"] == "InferenceComponentName"
        assert alarm["AlarmActions"] == [{"Ref": step_id}]
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and alarm["Threshold"] == 1


def test_synth_warns_what_scale_to_zero_costs(tmp_path: Any) -> None:
    app, _ = make_stack(TO_ZERO, outdir=str(tmp_path))
    printed = warnings(app.synth())
    assert any(SCALE_TO_ZERO_COST in w for w in printed)
    assert "cold start of minutes" in SCALE_TO_ZERO_COST and "no_capacity" in SCALE_TO_ZERO_COST
    app, _ = make_stack(COMPONENTS, outdir=str(tmp_path / "plain"))
    assert not any(SCALE_TO_ZERO_COST in w for w in warnings(app.synth()))


def _statements(template: Template) -> dict[str, dict]:
    (policy,) = [p["Properties"] for p in resources(template, "AWS::IAM::Policy").values()
                 if p["Properties"]["PolicyName"].startswith("EndpointExecutionPolicy")]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_execution_role_reads_the_package_and_the_adapters(components: Template) -> None:
    statements = _statements(components)
    assert {"ReadModelData", "ReadAdapterArtifacts", "ReadRuntimeAdapters", "ComponentLogs"} <= set(statements)
    assert sorted(statements["ReadAdapterArtifacts"]["Resource"]) == [
        "arn:aws:s3:::adapter-bucket/sql/v1.tar.gz", "arn:aws:s3:::other-bucket/a/support.tar.gz"]
    assert statements["ReadAdapterArtifacts"]["Action"] == "s3:GetObject"
    runtime = json.dumps(statements["ReadRuntimeAdapters"]["Resource"])
    assert "ArtifactsBucket" in runtime and "/adapters/*" in runtime
    logs = json.dumps(statements["ComponentLogs"]["Resource"])
    assert f"/aws/sagemaker/InferenceComponents/{BASE}" in logs
    # The components wait for the grants they are created with.
    policy_id = next(k for k in resources(components, "AWS::IAM::Policy") if k.startswith("EndpointExecutionPolicy"))
    assert policy_id in _components(components)[BASE]["DependsOn"]
    assert policy_id in next(iter(resources(components, "AWS::SageMaker::EndpointConfig").values()))["DependsOn"]


@pytest.mark.parametrize("route", ["predict", "rag", "completions", "invocations"])
def test_api_names_the_base_or_the_adapters_component(components: Template, route: str) -> None:
    integration = _methods(components)[("POST", route)]["Integration"]
    header = "integration.request.header.X-Amzn-SageMaker-Inference-Component"
    assert integration["RequestParameters"][header] == f"'{BASE}'"
    template = integration["RequestTemplates"]["application/json"]
    assert "$!input.params('X-Amzn-SageMaker-Adapter-Identifier')" in template
    assert "#set($context.requestOverride.header.X-Amzn-SageMaker-Inference-Component = $adapter)" in template
    # SageMaker tells the container the adapter: it is not also sent as a custom attribute.
    assert "Custom-Attributes" not in template
    assert template.endswith("$input.body")


def test_model_info_asks_the_base_component(components: Template) -> None:
    params = _methods(components)[("GET", "info")]["Integration"]["RequestParameters"]
    assert params["integration.request.header.X-Amzn-SageMaker-Inference-Component"] == f"'{BASE}'"


def test_invocation_alarms_watch_the_base_component(components: Template) -> None:
    alarms = {k[:-8]: a["Properties"] for k, a in resources(components, "AWS::CloudWatch::Alarm").items()}
    assert alarms["EndpointAlarmsModelLatencyP90"]["Dimensions"] == [{"Name": "InferenceComponentName",
                                                                       "Value": BASE}]
    rate = alarms["EndpointAlarmsError5XxRate"]
    assert all(q["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "InferenceComponentName", "Value": BASE}]
               for q in rate["Metrics"] if "MetricStat" in q)
    # Instance metrics stay the endpoint's.
    assert alarms["EndpointAlarmsGpuMemory"]["Dimensions"] == [
        {"Name": "EndpointName", "Value": "lora-endpoint"}, {"Name": "VariantName", "Value": "AllTraffic"}]


def test_outputs_name_the_base_component_and_the_adapter_prefix(components: Template) -> None:
    outputs = components.find_outputs("*")
    assert outputs["BaseInferenceComponentName"]["Value"] == BASE
    assert "/adapters/" in json.dumps(outputs["AdapterArtifactsUri"]["Value"])
    assert "AdapterArtifactsUri" not in synth().find_outputs("*")
