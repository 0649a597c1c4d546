// The playground: one column per model, every answer streaming at once. Plain JS, no dependency, no build.
// Everything the endpoint sends (answers, model names, errors) goes into the page as text (textContent),
// never as markup, so model output cannot inject anything.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const ROUTES = { prompt: "/predict", chat: "/v1/chat/completions", rag: "/rag" };
const INTEGER_SETTINGS = new Set(["max_new_tokens", "top_k", "seed"]);
const SETTINGS = ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"];

const state = {
  target: { kind: "local", target: "this endpoint", streaming: true, url: null, endpoint_name: "lora-local",
            region: "us-east-1", sigv4: false, api_key: false },
  base: null,          // the base model's id
  models: [],          // [{id, adapter: bool}]
  columns: new Map(),  // model id -> column
  running: null,       // AbortController of the requests in flight
};

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

// ---------------------------------------------------------------- the request a column sends
function settings() {
  const out = {};
  for (const name of SETTINGS) {
    const raw = $("#" + name).value.trim();
    if (raw === "") continue;
    const value = Number(raw);
    out[name] = Number.isNaN(value) ? raw : value;  // sent as typed: the endpoint says what is wrong
  }
  const stop = $("#stop").value.split("\n").filter((line) => line !== "");
  if (stop.length) out.stop = stop;
  return out;
}

function passages() {
  return $("#passages").value.split(/\n\s*\n/).map((block) => block.trim()).filter(Boolean).map((block) => {
    const named = /^\[([^\]\n]+)\]\s*([\s\S]*)$/.exec(block);
    return named ? { id: named[1], text: named[2] } : block;
  });
}

function wantsStream() {
  return $("#stream").checked && state.target.streaming;
}

// The body for one column: its model named the way each route names it; nothing for the base model.
function buildBody(column) {
  const kind = mode();
  if (kind === "chat") return chatBody(column.id, chatMessages(column));
  const params = settings();
  const stream = wantsStream();
  const adapter = column.adapter ? column.id : null;
  const body = kind === "rag" ? { query: $("#prompt").value, context: passages() } : { inputs: $("#prompt").value };
  if (adapter) body.adapters = adapter;
  if (Object.keys(params).length) body.parameters = params;
  if (stream) body.stream = true;
  return body;
}

// A chat completions body: the settings under their OpenAI names (max_new_tokens is max_tokens).
function chatBody(model, messages) {
  const { max_new_tokens: maxTokens, ...rest } = settings();
  const body = { model, messages };
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  Object.assign(body, rest);
  if (wantsStream()) Object.assign(body, { stream: true, stream_options: { include_usage: true } });
  return body;
}

function chatMessages(column) {
  const messages = [];
  const system = $("#system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  return messages.concat(column.history, [{ role: "user", content: $("#prompt").value }]);
}

// ---------------------------------------------------------------- columns
function makeColumn(model) {
  const node = $("#column-template").content.firstElementChild.cloneNode(true);
  node.dataset.model = model.id;
  $(".model-name", node).textContent = model.id;
  $(".model-kind", node).textContent = model.adapter ? "adapter" : "base model";
  const column = { id: model.id, adapter: model.adapter, node, history: [] };
  for (const button of node.querySelectorAll(".copy button")) {
    button.addEventListener("click", () => copyRequest(column, button.dataset.as));
  }
  return column;
}

function syncColumns() {
  const wanted = state.models.filter((m) => $(`#model-list input[value="${CSS.escape(m.id)}"]`).checked);
  const section = $("#columns");
  for (const [id, column] of state.columns) {
    if (!wanted.some((m) => m.id === id)) column.node.remove();
  }
  for (const model of wanted) {
    if (!state.columns.has(model.id)) state.columns.set(model.id, makeColumn(model));
    section.appendChild(state.columns.get(model.id).node);  // keeps the models' order
  }
}

function activeColumns() {
  return [...state.columns.values()].filter((column) => column.node.isConnected);
}

function resetOutput(column) {
  const { node } = column;
  $(".answer", node).textContent = "";
  $(".sources", node).hidden = true;
  $(".sources", node).textContent = "";
  $(".error", node).hidden = true;
  $(".error-line", node).textContent = "";
  $(".error-body", node).textContent = "";
  $(".asked", node).hidden = true;
  for (const name of ["status", "prompt", "generated", "ttft", "rate", "finish"]) setStat(column, name, "-");
}

function setStat(column, name, value) {
  $(".stat-" + name, column.node).textContent = String(value);
}

function renderHistory(column) {
  const list = $(".history", column.node);
  list.replaceChildren(...column.history.map((message) => {
    const item = document.createElement("li");
    item.className = message.role;
    item.textContent = message.content;
    return item;
  }));
}

// ---------------------------------------------------------------- one call, read as it arrives
async function run(column, signal) {
  resetOutput(column);
  const kind = mode();
  const body = buildBody(column);
  const answer = $(".answer", column.node);
  if (kind === "chat") {
    $(".asked", column.node).textContent = $("#prompt").value;
    $(".asked", column.node).hidden = false;
  }
  const clock = { start: performance.now(), first: null, last: null };
  const counts = { generated: 0, prompt: null, finalGenerated: null };
  let text = "";
  const onToken = (piece) => {
    const now = performance.now();
    if (clock.first === null) {
      clock.first = now;
      setStat(column, "ttft", `${Math.round(now - clock.start)} ms`);
    }
    clock.last = now;
    counts.generated += 1;
    text += piece;
    answer.textContent = text;
    setStat(column, "generated", counts.generated);
  };
  answer.classList.add("running");
  answer.setAttribute("aria-busy", "true");  // a screen reader reads the answer once, when it is complete
  let failed = null;
  try {
    const response = await fetch(ROUTES[kind], {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "*/*" },
      body: JSON.stringify(body), signal,
    });
    setStat(column, "status", response.status);
    const type = response.headers.get("content-type") || "";
    if (!response.ok) {
      failed = await response.text();
      showError(column, response.status, failed);
      return;
    }
    if (type.startsWith("text/event-stream") || type.startsWith("application/jsonlines")) {
      await readLines(response, (line) => {
        const item = parseLine(line, type.startsWith("text/event-stream"));
        if (item === null) return;
        if (isErrorRecord(item)) {
          failed = item;
          showError(column, 0, JSON.stringify(item), "the stream ended with an error record");
          return;
        }
        const final = kind === "chat" ? readChatChunk(item, onToken, column, counts) : readGenerateLine(item, onToken);
        if (final) {
          if (final.text !== undefined) { text = final.text; answer.textContent = text; }
          finish(column, final, counts, kind);
        }
      });
    } else {
      const data = await response.json();
      const whole = Array.isArray(data) ? data[0] : data;
      const final = kind === "chat" ? chatFinal(whole) : generateFinal(whole);
      const now = performance.now();
      clock.first = clock.last = now;
      setStat(column, "ttft", `${Math.round(now - clock.start)} ms (whole answer)`);
      text = final.text || "";
      answer.textContent = text;
      finish(column, final, counts, kind);
    }
  } catch (err) {
    if (err.name === "AbortError") {
      setStat(column, "finish", "stopped");
    } else {
      failed = String(err);
      showError(column, 0, "", `the request failed (${err.message || err})`);
    }
    return;
  } finally {
    answer.classList.remove("running");
    answer.setAttribute("aria-busy", "false");
    const generated = counts.finalGenerated ?? counts.generated;
    if (generated && clock.first !== null) {
      const seconds = (clock.last - (generated > 1 ? clock.first : clock.start)) / 1000;
      const tokens = generated > 1 ? generated - 1 : generated;
      if (seconds > 0) setStat(column, "rate", (tokens / seconds).toFixed(1));
    }
  }
  if (kind === "chat" && failed === null) {
    column.history.push({ role: "user", content: $("#prompt").value }, { role: "assistant", content: text });
    renderHistory(column);
    $(".asked", column.node).hidden = true;
  }
}

async function readLines(response, onLine) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      onLine(buffer.slice(0, end));
      buffer = buffer.slice(end + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) onLine(buffer);
}

function parseLine(line, sse) {
  let payload = line.trim();
  if (sse) {
    if (!payload.startsWith("data:")) return null;
    payload = payload.slice(5).trim();
    if (payload === "[DONE]") return null;
  }
  if (!payload) return null;
  try {
    return JSON.parse(payload);
  } catch {
    return { type: "bad_stream", message: `not JSON: ${payload.slice(0, 200)}` };
  }
}

function isErrorRecord(item) {
  return (typeof item.type === "string" && item.code !== undefined) || item.type === "bad_stream"
    || Boolean(item.details && item.details.finish_reason === "error");
}

// JSON lines of generate / RAG: one per token, the last one also carries the whole answer.
function readGenerateLine(item, onToken) {
  if (item.token) onToken(item.token.text || "");
  return item.generated_text !== undefined ? generateFinal(item) : null;
}

function generateFinal(item) {
  const details = item.details || {};
  return { text: item.generated_text, prompt: details.prompt_tokens, generated: details.generated_tokens,
           finish: details.finish_reason, sources: item.sources, dropped: item.dropped_sources };
}

// SSE chunks of chat: deltas, then a usage chunk (stream_options.include_usage).
function readChatChunk(item, onToken, column, counts) {
  for (const choice of item.choices || []) {
    if (choice.delta && choice.delta.content) onToken(choice.delta.content);
    if (choice.finish_reason) setStat(column, "finish", choice.finish_reason);
  }
  if (item.usage) {
    return { prompt: item.usage.prompt_tokens, generated: item.usage.completion_tokens };
  }
  return null;
}

function chatFinal(item) {
  const choice = (item.choices || [])[0] || {};
  const usage = item.usage || {};
  return { text: (choice.message || {}).content || "", prompt: usage.prompt_tokens,
           generated: usage.completion_tokens, finish: choice.finish_reason };
}

function finish(column, final, counts, kind) {
  if (final.prompt !== undefined) setStat(column, "prompt", final.prompt);
  if (final.generated !== undefined) {
    counts.finalGenerated = final.generated;
    setStat(column, "generated", final.generated);
  }
  if (final.finish) setStat(column, "finish", final.finish);
  if (kind === "rag" && final.sources) {
    const sources = $(".sources", column.node);
    const names = (list) => (list && list.length ? list.map(String).join(", ") : "none");
    sources.textContent = `Sources used: ${names(final.sources)}; dropped: ${names(final.dropped)}`
      + " (a number is the position of an unnamed passage, from 0)";
    sources.hidden = false;
  }
}

// The error as the endpoint returned it: its status, type and message on one line, the body below.
function showError(column, status, raw, lead) {
  let kind = "";
  let message = "";
  try {
    const body = JSON.parse(raw);
    if (typeof body.type === "string") {
      kind = body.type;
      message = body.message || (body.error && body.error.message) || "";
    } else if (typeof body.error === "string") {  // DJL async mode: "type: message"
      [kind, message] = body.error.includes(": ") ? [body.error.split(": ")[0], body.error.split(": ").slice(1).join(": ")]
        : ["", body.error];
    } else if (body.error && typeof body.error === "object") {
      kind = body.error.type || "";
      message = body.error.message || "";
    } else {
      kind = body.Code || body.code || "";
      message = body.Message || body.message || "";
    }
  } catch {
    message = raw;
  }
  const line = [status ? `HTTP ${status}` : "", kind, message].filter(Boolean).join(" - ");
  $(".error-line", column.node).textContent = lead && line ? `${lead}: ${line}` : lead || line;
  $(".error-body", column.node).textContent = raw;
  $(".error", column.node).hidden = false;
  setStat(column, "finish", "error");
}

// ---------------------------------------------------------------- copy request as
function endpointUrl() {
  return (state.target.url || window.location.origin).replace(/\/+$/, "");
}

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

// A JSON value as a Python literal.
function py(value, indent = "") {
  const inner = indent + "    ";
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return "[\n" + value.map((v) => inner + py(v, inner)).join(",\n") + ",\n" + indent + "]";
  }
  const keys = Object.keys(value);
  if (!keys.length) return "{}";
  return "{\n" + keys.map((k) => `${inner}${JSON.stringify(k)}: ${py(value[k], inner)}`).join(",\n") + ",\n" + indent + "}";
}

function snippet(column, as) {
  const kind = mode();
  const body = buildBody(column);
  const target = state.target;
  const stream = Boolean(body.stream);
  if (as === "curl") {
    const lines = target.kind === "sagemaker"
      ? [`curl${stream ? " -N" : ""} https://runtime.sagemaker.${target.region}.amazonaws.com/endpoints/`
          + `${target.endpoint_name}/${stream ? "invocations-response-stream" : "invocations"}`,
         `  --aws-sigv4 "aws:amz:${target.region}:sagemaker" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"`,
         '  -H "x-amz-security-token: $AWS_SESSION_TOKEN"']
      : [`curl${stream ? " -N" : ""} ${endpointUrl()}${ROUTES[kind]}`];
    if (target.kind === "sagemaker" && target.inference_component) {
      lines.push(`  -H ${shellQuote("X-Amzn-SageMaker-Inference-Component: " + target.inference_component)}`);
    }
    if (target.kind === "api" && target.sigv4) {
      lines.push(`  --aws-sigv4 "aws:amz:${target.region}:execute-api" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"`);
    }
    if (target.api_key) lines.push('  -H "x-api-key: $API_KEY"');
    lines.push("  -H 'Content-Type: application/json'", `  -d ${shellQuote(JSON.stringify(body))}`);
    return lines.join(" \\\n");
  }
  const local = target.kind === "local";
  if (as === "boto3") {
    const client = local
      ? `runtime = boto3.client("sagemaker-runtime", endpoint_url=${JSON.stringify(endpointUrl())}, region_name="us-east-1",\n`
        + '                       aws_access_key_id="local", aws_secret_access_key="local")  # any keys locally'
      : `runtime = ${target.profile ? `boto3.Session(profile_name=${JSON.stringify(target.profile)})` : "boto3"}`
        + `.client("sagemaker-runtime", region_name=${JSON.stringify(target.region || "us-east-1")})`;
    // On an endpoint with inference components the runtime wants the component on every call.
    const component = target.inference_component
      ? `InferenceComponentName=${JSON.stringify(target.inference_component)},\n    ` : "";
    const call = stream
      ? ["response = runtime.invoke_endpoint_with_response_stream(",
         `    EndpointName=${JSON.stringify(target.endpoint_name)}, ${component}ContentType="application/json", Body=json.dumps(body))`,
         'for event in response["Body"]:',
         '    print(event["PayloadPart"]["Bytes"].decode(), end="")']
      : ["response = runtime.invoke_endpoint(",
         `    EndpointName=${JSON.stringify(target.endpoint_name)}, ${component}ContentType="application/json", Body=json.dumps(body))`,
         'print(json.loads(response["Body"].read()))'];
    const note = target.kind === "api"
      ? ["# boto3 calls the SageMaker runtime, not API Gateway: the endpoint behind the API (the stack's EndpointName)"]
      : [];
    return ["import json", "", "import boto3", "", ...note, client, `body = ${py(body)}`, ...call].join("\n");
  }
  // OpenAI's client speaks chat completions only.
  if (kind === "rag" || target.kind === "sagemaker") {
    return kind === "rag"
      ? "# RAG has no OpenAI equivalent: use curl or boto3 (POST /rag)."
      : "# The SageMaker runtime has no OpenAI-compatible URL: use boto3, or the local endpoint / API Gateway.";
  }
  const chat = buildChatForOpenAI(column);
  const { model, messages, stream: streaming, stream_options: options, ...rest } = chat;
  const known = ["max_tokens", "temperature", "top_p", "seed", "stop"];
  const args = [`    model=${JSON.stringify(model)},`, `    messages=${py(messages, "    ")},`];
  const extra = {};
  for (const [key, value] of Object.entries(rest)) {
    if (known.includes(key)) args.push(`    ${key}=${py(value, "    ")},`);
    else extra[key] = value;
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${py(extra, "    ")},  # vLLM's extensions`);
  if (streaming) args.push("    stream=True,", `    stream_options=${py(options, "    ")},`);
  const headers = target.api_key ? ', default_headers={"x-api-key": os.environ["API_KEY"]}' : "";
  const lines = [
    ...(kind === "prompt" ? ["# The OpenAI client speaks chat only: the prompt is sent as one user message."] : []),
    ...(target.sigv4 ? ["# This API wants SigV4 (execute-api); the OpenAI client cannot sign: use curl --aws-sigv4."] : []),
    ...(headers ? ["import os", ""] : []),
    "from openai import OpenAI", "",
    `client = OpenAI(base_url=${JSON.stringify(endpointUrl() + "/v1")}, api_key="unused"${headers})`,
    (streaming ? "stream" : "answer") + " = client.chat.completions.create(", ...args, ")",
  ];
  if (streaming) {
    lines.push("for chunk in stream:", "    if chunk.choices:", '        print(chunk.choices[0].delta.content or "", end="")');
  } else {
    lines.push("print(answer.choices[0].message.content)");
  }
  return lines.join("\n");
}

function buildChatForOpenAI(column) {
  return chatBody(column.id, chatMessages(mode() === "chat" ? column : { history: [] }));
}

async function copyRequest(column, as) {
  const code = $(".code", column.node);
  code.textContent = snippet(column, as);
  code.hidden = false;
  code.dataset.as = as;
  try {
    await navigator.clipboard.writeText(code.textContent);
    code.title = "copied to the clipboard";
  } catch {
    code.title = "select and copy";  // no clipboard permission: the code is shown to copy by hand
  }
}

// ---------------------------------------------------------------- start-up and the form
async function loadTarget() {
  try {
    const response = await fetch("/playground/target");
    if (response.ok) Object.assign(state.target, await response.json());
  } catch {
    // keep the defaults: the page's own origin
  }
  $("#target").textContent = state.target.target;
  $("#stream-note").textContent = state.target.streaming ? ""
    : "(this target cannot stream: each answer arrives whole)";
  if (!state.target.streaming) $("#stream").disabled = true;
}

async function loadModels() {
  const status = $("#models-status");
  status.textContent = "loading the model list (GET /v1/models)...";
  let data;
  try {
    const response = await fetch("/v1/models");
    data = await response.json();
    if (!response.ok) throw new Error(`HTTP ${response.status} ${JSON.stringify(data)}`);
  } catch (err) {
    status.textContent = `could not list the models: ${err.message || err}`;
    return;
  }
  const list = Array.isArray(data.data) ? data.data : [];
  state.models = list.map((m) => ({ id: String(m.id), adapter: m.parent !== null && m.parent !== undefined }));
  const base = state.models.find((m) => !m.adapter);
  state.base = base ? base.id : null;
  const holder = $("#model-list");
  holder.replaceChildren(...state.models.map((model, index) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = model.id;
    box.checked = index < 4;
    box.addEventListener("change", syncColumns);
    label.append(box, " " + model.id + (model.adapter ? "" : " (base)"));
    return label;
  }));
  status.textContent = `${state.models.length} model(s): the base and ${state.models.length - (base ? 1 : 0)} adapter(s)`;
  syncColumns();
}

function onModeChange() {
  const kind = mode();
  $("#rag-field").hidden = kind !== "rag";
  $("#system-field").hidden = kind !== "chat";
  $("#prompt-label").textContent = kind === "rag" ? "Question" : kind === "chat" ? "Message" : "Prompt";
  for (const column of state.columns.values()) $(".history", column.node).hidden = kind !== "chat";
}

async function send(event) {
  event.preventDefault();
  const columns = activeColumns();
  if (!columns.length) {
    $("#models-status").textContent = "pick at least one model";
    return;
  }
  if (state.running) state.running.abort();
  const controller = new AbortController();
  state.running = controller;
  $("#send").disabled = true;
  $("#cancel").disabled = false;
  document.body.dataset.busy = "true";
  try {
    await Promise.all(columns.map((column) => run(column, controller.signal)));
  } finally {
    if (state.running === controller) state.running = null;
    $("#send").disabled = false;
    $("#cancel").disabled = true;
    document.body.dataset.busy = "false";
  }
}

function clearAll() {
  for (const column of state.columns.values()) {
    column.history = [];
    renderHistory(column);
    resetOutput(column);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#request").addEventListener("submit", send);
  $("#cancel").addEventListener("click", () => state.running && state.running.abort());
  $("#clear").addEventListener("click", clearAll);
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", onModeChange);
  await loadTarget();
  await loadModels();
  onModeChange();
  document.body.dataset.ready = "true";
});
