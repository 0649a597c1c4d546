"""Regional REST API with direct AWS integrations to the SageMaker runtime (no Lambda on the hot path).

Routes: ``POST /predict``, ``POST /rag``, ``POST /v1/chat/completions``, ``POST /invocations`` (passthrough)
invoke the endpoint; ``GET /model/info`` invokes it with ``{"task": "info"}``; ``GET /health`` calls
``DescribeEndpoint``. Status and error mapping: see ``api_mapping``. With inference components every invoke
names one (the base, or the adapter's: see ``api_headers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.components import api_headers as headers
from cdk.components import api_mapping as mapping
from cdk.components.log_group import EncryptedLogGroup
from cdk.components.nag import skip_checkov
from cdk.settings import ApiSettings

JSON = "application/json"


@dataclass(frozen=True)
class Route:
    """One invoke route: resource path, HTTP method and request model (None for GET: the model info body)."""

    path: str
    method: str
    model: str | None

    @property
    def forwards_headers(self) -> bool:
        """Whether the caller's Content-Type, Accept, custom attributes and adapter header reach the model."""
        return self.method == "POST"

    def request_template(self, inference_component: str | None) -> str:
        if not self.forwards_headers:
            return mapping.INFO_REQUEST_TEMPLATE
        return headers.invoke_request_template(inference_component)


ROUTES = (
    Route("predict", "POST", "Generate"),
    Route("rag", "POST", "Rag"),
    Route("v1/chat/completions", "POST", "ChatCompletion"),
    Route("invocations", "POST", "Invocation"),
    Route("model/info", "GET", None),
)

_SCHEMA_KEYS = {
    "minItems": "min_items", "maxItems": "max_items", "minLength": "min_length", "maxLength": "max_length",
    "anyOf": "any_of", "additionalProperties": "additional_properties",
}


def json_schema(spec: dict[str, Any]) -> apigw.JsonSchema:
    """Turn a plain JSON-schema dict into CDK's ``JsonSchema`` (recursively)."""
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        name = _SCHEMA_KEYS.get(key, key)
        if key == "type":
            value = apigw.JsonSchemaType(value.upper())
        elif key == "properties":
            value = {k: json_schema(v) for k, v in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            value = json_schema(value)
        elif key == "anyOf":
            value = [json_schema(v) for v in value]
        kwargs[name] = value
    return apigw.JsonSchema(**kwargs)


class InferenceApi(Construct):
    """The REST API, its integration role, models, validators, routes, auth and error mapping."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: ApiSettings,
        endpoint_name: str,
        endpoint_arn: str,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
        inference_component: str | None = None,
    ) -> None:
        """``inference_component``: the base inference component every invoke names (inference_components mode)."""
        super().__init__(scope, construct_id)
        iam_auth = settings.auth == "iam"
        # Access logs name callers and their IPs: encrypted, and kept with the stack's data under retain.
        self.access_logs = EncryptedLogGroup(
            self, "AccessLogs", log_group_name=f"/lora-endpoint/{endpoint_name}/api-access",
            retention_days=log_retention_days, removal_policy=removal_policy,
        ).log_group
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{endpoint_name}-api",
            description=f"Inference API for SageMaker endpoint {endpoint_name}",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=settings.stage_name,
                tracing_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                throttling_rate_limit=settings.throttle_rate,
                throttling_burst_limit=settings.throttle_burst,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=True,
                ),
            ),
            default_method_options=apigw.MethodOptions(
                authorization_type=apigw.AuthorizationType.IAM if iam_auth else apigw.AuthorizationType.NONE,
                api_key_required=not iam_auth,
            ),
        )
        self._acknowledge(iam_auth)
        skip_checkov(
            self.api.deployment_stage, "CKV_AWS_120",
            "No response cache: generations are sampled and per caller, the invoke routes are POSTs (cached "
            "only by GET), and a cache cluster bills by the hour.",
        )
        self.role = iam.Role(
            self,
            "IntegrationRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description=f"API Gateway calls endpoint {endpoint_name} and nothing else",
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["sagemaker:InvokeEndpoint"], resources=[endpoint_arn]))
        self.role.add_to_policy(iam.PolicyStatement(actions=["sagemaker:DescribeEndpoint"], resources=[endpoint_arn]))

        error_model = self.api.add_model(
            "ErrorModel", content_type=JSON, model_name="Error", schema=_schema(mapping.ERROR_BODY_SCHEMA, "Error")
        )
        self.body_validator = self.api.add_request_validator(
            "BodyValidator", request_validator_name="validate-body-and-parameters", validate_request_body=True,
            validate_request_parameters=True,
        )
        self.params_validator = self.api.add_request_validator(
            "ParamsValidator", request_validator_name="validate-parameters", validate_request_parameters=True
        )
        method_responses = [
            apigw.MethodResponse(status_code=code, response_models={JSON: error_model})
            if code != "200" else apigw.MethodResponse(status_code=code)
            for code in mapping.METHOD_RESPONSE_STATUSES
        ]
        self.methods: dict[str, apigw.Method] = {}
        for route in ROUTES:
            resource = self.api.root.resource_for_path(route.path)
            integration = apigw.AwsIntegration(
                service="runtime.sagemaker",
                path=f"endpoints/{endpoint_name}/invocations",
                integration_http_method="POST",
                options=self._options(
                    settings, {JSON: route.request_template(inference_component)}, _invoke_responses(),
                    headers.integration_request_parameters(inference_component) if route.forwards_headers
                    else _static_json_headers(inference_component),
                ),
            )
            models = {JSON: self.api.add_model(
                f"{route.model}Model", content_type=JSON, model_name=route.model,
                schema=_schema(mapping.REQUEST_SCHEMAS[route.model], route.model),
            )} if route.model else None
            self.methods[f"{route.method} /{route.path}"] = resource.add_method(
                route.method,
                integration,
                request_models=models,
                request_parameters=headers.method_request_parameters() if route.forwards_headers else None,
                request_validator=self.body_validator if models else self.params_validator,
                method_responses=method_responses,
            )
        health = apigw.AwsIntegration(
            service="api.sagemaker",
            action="DescribeEndpoint",
            integration_http_method="POST",
            options=self._options(
                settings,
                {JSON: mapping.DESCRIBE_ENDPOINT_TEMPLATE % endpoint_name},
                [
                    apigw.IntegrationResponse(status_code="200", response_templates={JSON: mapping.HEALTH_TEMPLATE}),
                    apigw.IntegrationResponse(selection_pattern="[45]\\d{2}", status_code="503",
                                              response_templates={JSON: mapping.HEALTH_UNKNOWN}),
                ],
                {**_static_json_headers(),
                 "integration.request.header.X-Amz-Target": "'SageMaker.DescribeEndpoint'",
                 "integration.request.header.Content-Type": "'application/x-amz-json-1.1'"},
            ),
        )
        self.methods["GET /health"] = self.api.root.add_resource("health").add_method(
            "GET", health, request_validator=self.params_validator,
            method_responses=[apigw.MethodResponse(status_code="200"), apigw.MethodResponse(status_code="503")],
        )
        for response_type, (status, error_type) in mapping.GATEWAY_ERRORS.items():
            self.api.add_gateway_response(
                f"Gateway{response_type.title().replace('_', '')}",
                type=apigw.ResponseType.of(response_type),
                status_code=status,
                templates={JSON: mapping.gateway_error_template(status, error_type)},
            )
        self.api_key: apigw.IApiKey | None = None
        if not iam_auth:
            plan = self.api.add_usage_plan(
                "UsagePlan",
                name=f"{endpoint_name}-usage",
                throttle=apigw.ThrottleSettings(rate_limit=settings.throttle_rate, burst_limit=settings.throttle_burst),
                quota=apigw.QuotaSettings(limit=settings.quota_per_day, period=apigw.Period.DAY),
            )
            plan.add_api_stage(stage=self.api.deployment_stage)
            self.api_key = self.api.add_api_key("ApiKey", api_key_name=f"{endpoint_name}-key")
            plan.add_api_key(self.api_key)

    def _options(
        self,
        settings: ApiSettings,
        request_templates: dict[str, str],
        responses: list[apigw.IntegrationResponse],
        request_parameters: dict[str, str],
    ) -> apigw.IntegrationOptions:
        return apigw.IntegrationOptions(
            credentials_role=self.role,
            passthrough_behavior=apigw.PassthroughBehavior.NEVER,
            request_parameters=request_parameters,
            request_templates=request_templates,
            integration_responses=responses,
            timeout=Duration.seconds(settings.timeout_s),
        )

    def _acknowledge(self, iam_auth: bool) -> None:
        Validations.of(self.api).acknowledge(
            Acknowledgment(
                id="AwsSolutions-APIG3",
                reason="No WAF web ACL by default (cost); requests are signed (IAM) or keyed with usage-plan "
                "throttling and quota. Attach the account's web ACL via Firewall Manager where one exists.",
            ),
            Acknowledgment(
                id="AwsSolutions-COG4",
                reason="Callers are services, authorized with IAM SigV4 (or API keys in api_keys mode), not "
                "Cognito user pools.",
            ),
        )
        if not iam_auth:
            Validations.of(self.api).acknowledge(
                Acknowledgment(
                    id="AwsSolutions-APIG4",
                    reason="api_keys mode was chosen explicitly in context: methods require an API key bound to "
                    "a usage plan with throttling and a daily quota instead of an authorizer.",
                )
            )
        cloudwatch_role = self.api.node.try_find_child("CloudWatchRole")
        if cloudwatch_role is not None:
            Validations.of(cloudwatch_role).acknowledge(
                Acknowledgment(
                    id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AmazonAPIGatewayPushToCloudWatchLogs]",
                    reason="API Gateway's account-wide logging role: the AWS managed policy is the documented "
                    "one and must cover every API in the account and region, which a stack-scoped policy "
                    "would break.",
                )
            )


def _static_json_headers(inference_component: str | None = None) -> dict[str, str]:
    """For routes whose body the gateway writes itself (model info, health): JSON both ways; model info asks
    the base inference component where there is one."""
    params = {f"integration.request.header.{name}": f"'{JSON}'" for name in (headers.CONTENT_TYPE, headers.ACCEPT)}
    return {**params, **headers.component_parameter(inference_component)}


def _invoke_responses() -> list[apigw.IntegrationResponse]:
    responses = [apigw.IntegrationResponse(status_code="200")]
    for pattern, (status, template) in mapping.RUNTIME_ERROR_MAP.items():
        responses.append(
            apigw.IntegrationResponse(
                selection_pattern=pattern,
                status_code=status,
                response_templates={JSON: mapping.RESPONSE_TEMPLATES[template]},
            )
        )
    return responses


def _schema(spec: dict[str, Any], title: str) -> apigw.JsonSchema:
    return json_schema({"schema": apigw.JsonSchemaVersion.DRAFT4, "title": title, **spec})

