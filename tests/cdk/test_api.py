"""Routes, validators, auth, integration role and the status/error mapping of the REST API."""

from __future__ import annotations

import json
import re

import pytest
from aws_cdk.assertions import Template

from cdk.components import api_mapping
from lora_endpoint.contract.api import request_schemas, schema_errors
from tests.cdk.conftest import only, resources, synth

INVOKE_ROUTES = {("POST", "predict"), ("POST", "rag"), ("POST", "completions"), ("POST", "invocations"),
                 ("GET", "info")}


def _methods(template: Template) -> dict[tuple[str, str], dict]:
    """(HTTP method, last path part) -> method properties."""
    paths = {k: r["Properties"]["PathPart"] for k, r in resources(template, "AWS::ApiGateway::Resource").items()}
    out = {}
    for method in resources(template, "AWS::ApiGateway::Method").values():
        props = method["Properties"]
        out[(props["HttpMethod"], paths[props["ResourceId"]["Ref"]])] = props
    return out


def _paths(template: Template) -> set[str]:
    res = resources(template, "AWS::ApiGateway::Resource")

    def full(key: str) -> str:
        props = res[key]["Properties"]
        parent = props["ParentId"]
        prefix = full(parent["Ref"]) if "Ref" in parent else ""
        return f"{prefix}/{props['PathPart']}"

    return {full(k) for k in res}


def test_routes_exist(default_template: Template) -> None:
    assert {"/predict", "/rag", "/v1/chat/completions", "/invocations", "/health", "/model/info"} <= _paths(
        default_template)
    assert set(_methods(default_template)) == INVOKE_ROUTES | {("GET", "health")}


def test_regional_with_logs_tracing_and_error_logging(default_template: Template) -> None:
    assert only(default_template, "AWS::ApiGateway::RestApi")["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    stage = only(default_template, "AWS::ApiGateway::Stage")
    assert stage["TracingEnabled"] is True
    assert "DestinationArn" in stage["AccessLogSetting"]
    settings = stage["MethodSettings"][0]
    assert (settings["LoggingLevel"], settings["DataTraceEnabled"]) == ("ERROR", False)
    assert (settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]) == (10, 20)


def test_every_route_is_iam_authorized_and_validated(default_template: Template) -> None:
    validators = {k: r["Properties"]
                  for k, r in resources(default_template, "AWS::ApiGateway::RequestValidator").items()}
    for key, method in _methods(default_template).items():
        assert method["AuthorizationType"] == "AWS_IAM", key
        validator = validators[method["RequestValidatorId"]["Ref"]]
        if key[0] == "POST":
            assert validator["ValidateRequestBody"] is True, key
            model_ref = method["RequestModels"]["application/json"]["Ref"]
            assert model_ref in resources(default_template, "AWS::ApiGateway::Model")
        else:
            assert validator["ValidateRequestParameters"] is True, key


def test_request_schemas(default_template: Template) -> None:
    models = {r["Properties"]["Name"]: json.loads(json.dumps(r["Properties"]["Schema"]))
              for r in resources(default_template, "AWS::ApiGateway::Model").values()}
    # The deployed models are the handler's contract, refusing stream: true (the integration cannot stream).
    contract = request_schemas(streaming=False)
    for name in ("Generate", "Rag", "ChatCompletion"):
        deployed = {k: v for k, v in models[name].items() if k not in ("$schema", "title")}
        assert deployed == contract[name], name
    assert models["Generate"]["required"] == ["inputs"]
    assert schema_errors({"inputs": "Hi", "stream": True}, models["Generate"])
    assert not schema_errors({"inputs": "Hi", "stream": False, "adapters": None}, models["Generate"])
    assert models["Invocation"]["type"] == "object"
    assert models["Error"]["required"] == ["code", "type", "message"]


def test_invoke_integrations_call_the_runtime_directly(default_template: Template) -> None:
    for key in INVOKE_ROUTES:
        integration = _methods(default_template)[key]["Integration"]
        assert integration["Type"] == "AWS"
        assert integration["Uri"] == (
            "arn:aws:apigateway:us-east-1:runtime.sagemaker:path/endpoints/lora-endpoint/invocations")
        assert integration["PassthroughBehavior"] == "NEVER"
        assert integration["TimeoutInMillis"] == 29000
    info = _methods(default_template)[("GET", "info")]["Integration"]
    assert info["RequestTemplates"] == {"application/json": '{"task": "info"}'}
    health = _methods(default_template)[("GET", "health")]["Integration"]
    assert health["Uri"] == "arn:aws:apigateway:us-east-1:api.sagemaker:action/DescribeEndpoint"
    assert health["RequestParameters"]["integration.request.header.X-Amz-Target"] == "'SageMaker.DescribeEndpoint'"


def test_integration_role_is_scoped_to_the_endpoint(default_template: Template) -> None:
    policy = next(p["Properties"] for p in resources(default_template, "AWS::IAM::Policy").values()
                  if p["Properties"]["PolicyName"].startswith("ApiIntegrationRole"))
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert sorted(statement["Action"]) == ["sagemaker:DescribeEndpoint", "sagemaker:InvokeEndpoint"]
    assert statement["Resource"]["Fn::Join"][1][-1] == ":endpoint/lora-endpoint"


def _responses(template: Template) -> list[dict]:
    return _methods(template)[("POST", "predict")]["Integration"]["IntegrationResponses"]


@pytest.mark.parametrize(
    ("runtime_status", "method_status", "template_key"),
    [("424", "500", "model_error"), ("400", "400", "runtime_400"), ("429", "429", "model_not_ready"),
     ("503", "503", "service_unavailable"), ("500", "502", "bad_gateway"), ("403", "502", "bad_gateway"),
     ("530", "502", "bad_gateway")],
)
def test_runtime_status_selects_exactly_one_mapping(
    default_template: Template, runtime_status: str, method_status: str, template_key: str
) -> None:
    matches = [r for r in _responses(default_template)
               if "SelectionPattern" in r and re.fullmatch(r["SelectionPattern"], runtime_status)]
    assert len(matches) == 1
    assert matches[0]["StatusCode"] == method_status
    assert matches[0]["ResponseTemplates"]["application/json"] == api_mapping.RESPONSE_TEMPLATES[template_key]


def test_success_passes_the_body_through(default_template: Template) -> None:
    (default,) = [r for r in _responses(default_template) if "SelectionPattern" not in r]
    assert default == {"StatusCode": "200"}


def test_model_error_restores_the_container_status_and_body() -> None:
    template = api_mapping.RESPONSE_TEMPLATES["model_error"]
    assert "$input.path('$.OriginalStatusCode')" in template
    assert "#set($context.responseOverride.status = $status)" in template
    for code in (400, 404, 413, 415, 429, 503):
        assert str(code) in template.split("#foreach($code in [")[1].split("]")[0]
    assert "$message#else" in template  # a body in the project's shape is returned as is
    # DJL async mode's {"code", "error": "type: message"} becomes that shape
    assert "$util.parseJson($message)" in template and '"type": "$kind"' in template


def test_throttling_becomes_429() -> None:
    template = api_mapping.RESPONSE_TEMPLATES["runtime_400"]
    assert "#set($context.responseOverride.status = 429)" in template
    assert '"type": "throttled"' in template


def test_no_capacity_becomes_503_not_a_bad_request() -> None:
    # An inference component scaled to zero answers "no capacity" until a copy is up: a temporary outage.
    template = api_mapping.RESPONSE_TEMPLATES["runtime_400"]
    branches = template.split("#elseif")
    assert len(branches) == 2 and branches[1].startswith('($message.contains("apacity"))')
    assert "#set($context.responseOverride.status = 503)" in branches[1].split("#else")[0]
    assert '"type": "no_capacity"' in branches[1].split("#else")[0]
    assert '"type": "invalid_request"' in branches[1].split("#else")[1]


def test_gateway_errors_share_the_error_shape(default_template: Template) -> None:
    found = {r["Properties"]["ResponseType"]: r["Properties"]
             for r in resources(default_template, "AWS::ApiGateway::GatewayResponse").values()}
    assert found["BAD_REQUEST_BODY"]["StatusCode"] == "400"
    assert "validationErrorString" in found["BAD_REQUEST_BODY"]["ResponseTemplates"]["application/json"]
    assert found["THROTTLED"]["StatusCode"] == "429"
    assert found["INTEGRATION_TIMEOUT"]["StatusCode"] == "504"
    assert found["REQUEST_TOO_LARGE"]["StatusCode"] == "413"
    assert found["UNSUPPORTED_MEDIA_TYPE"]["StatusCode"] == "415"
    for props in found.values():
        assert '"code": ' + props["StatusCode"] in props["ResponseTemplates"]["application/json"]


def test_api_keys_mode_has_usage_plan_with_throttle_and_quota() -> None:
    template = synth({"api_auth": "api_keys", "api_throttle_rate": 5, "api_throttle_burst": 7,
                      "api_quota_per_day": 500})
    for key, method in _methods(template).items():
        assert (method["AuthorizationType"], method["ApiKeyRequired"]) == ("NONE", True), key
    plan = only(template, "AWS::ApiGateway::UsagePlan")
    assert plan["Throttle"] == {"RateLimit": 5, "BurstLimit": 7}
    assert plan["Quota"] == {"Limit": 500, "Period": "DAY"}
    assert len(resources(template, "AWS::ApiGateway::ApiKey")) == 1
    assert len(resources(template, "AWS::ApiGateway::UsagePlanKey")) == 1


def test_integration_timeout_is_configurable() -> None:
    template = synth({"api_timeout_s": 60, "handler": {"time_budget_s": 50}})
    for method in _methods(template).values():
        assert method["Integration"]["TimeoutInMillis"] == 60000


FORWARDED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
ADAPTER = "X-Amzn-SageMaker-Adapter-Identifier"


@pytest.mark.parametrize("route", ["predict", "rag", "completions", "invocations"])
def test_invoke_routes_forward_the_callers_headers(default_template: Template, route: str) -> None:
    method = _methods(default_template)[("POST", route)]
    # GIVEN the method declares the caller's headers (optional) ...
    declared = {f"method.request.header.{h}": False for h in (*FORWARDED, ADAPTER)}
    assert method["RequestParameters"] == declared
    # ... THEN the runtime gets them under its own header names, not fixed values
    params = method["Integration"]["RequestParameters"]
    assert params == {f"integration.request.header.{h}": f"method.request.header.{h}" for h in FORWARDED}
    # AND the adapter header travels as a custom attribute (InvokeEndpoint has no adapter header)
    template = method["Integration"]["RequestTemplates"]["application/json"]
    assert f"$!input.params('{ADAPTER}')" in template
    assert (f"#set($context.requestOverride.header.X-Amzn-SageMaker-Custom-Attributes = "
            f"\"${{custom}}{ADAPTER}=$adapter\")") in template
    assert template.endswith("$input.body")


def test_gateway_written_bodies_keep_fixed_json_headers(default_template: Template) -> None:
    params = _methods(default_template)[("GET", "info")]["Integration"]["RequestParameters"]
    assert params == {"integration.request.header.Content-Type": "'application/json'",
                      "integration.request.header.Accept": "'application/json'"}


def _access_logs(template: Template) -> tuple[dict, dict]:
    (group,) = [g for k, g in resources(template, "AWS::Logs::LogGroup").items() if k.startswith("ApiAccessLogs")]
    keys = resources(template, "AWS::KMS::Key")
    return group, keys[group["Properties"]["KmsKeyId"]["Fn::GetAtt"][0]]


def test_access_logs_are_encrypted_with_a_key_only_logs_may_use_for_them(default_template: Template) -> None:
    group, key = _access_logs(default_template)
    assert group["Properties"]["LogGroupName"] == "/lora-endpoint/lora-endpoint/api-access"
    assert group["Properties"]["RetentionInDays"] == 90
    assert key["Properties"]["EnableKeyRotation"] is True
    (statement,) = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if "Service" in s["Principal"]]
    assert statement["Principal"]["Service"] == "logs.us-east-1.amazonaws.com"
    arn = json.dumps(statement["Condition"]["ArnEquals"]["kms:EncryptionContext:aws:logs:arn"])
    assert ":log-group:/lora-endpoint/lora-endpoint/api-access" in arn and "AWS::AccountId" in arn
    stage = only(default_template, "AWS::ApiGateway::Stage")
    assert stage["AccessLogSetting"]["DestinationArn"]["Fn::GetAtt"][0] in resources(
        default_template, "AWS::Logs::LogGroup")


@pytest.mark.parametrize(("removal", "policy"), [("retain", "Retain"), ("destroy", "Delete")])
def test_access_logs_follow_the_removal_policy(removal: str, policy: str) -> None:
    group, key = _access_logs(synth({"removal_policy": removal, "log_retention_days": 30}))
    assert (group["DeletionPolicy"], group["UpdateReplacePolicy"]) == (policy, policy)
    assert group["Properties"]["RetentionInDays"] == 30
    # A retained log group stays readable: its key is kept with it.
    assert key["DeletionPolicy"] == policy


def test_stage_cache_finding_is_suppressed_with_a_reason(default_template: Template) -> None:
    (stage,) = resources(default_template, "AWS::ApiGateway::Stage").values()
    (skip,) = stage["Metadata"]["checkov"]["skip"]
    assert skip["id"] == "CKV_AWS_120" and "sampled" in skip["comment"]
