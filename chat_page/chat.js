"use strict";
// The chat page. Every text it shows (answers, prompts, labels, messages) goes in with
// textContent, never as HTML: a prompt or an answer holding <script> is just shown.

const $ = (id) => document.getElementById(id);
const panels = [$("answer-0"), $("answer-1")];
let info = null;
let running = [];  // the answers streaming now: {controller, id}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  info = await (await fetch("/api/info")).json();
  for (const [key, label] of Object.entries(info.models)) {
    const item = document.createElement("li");
    item.textContent = `${key}: ${label}`;
    $("models").append(item);
    $("model").append(new Option(key === "finetuned" ? "Finetuned" : "Base", key));
  }
  if (info.models.finetuned && info.models.base) {
    $("model").append(new Option("Compare: base and finetuned side by side", "compare"));
  }
  if (info.note) {
    $("note").textContent = info.note;
    $("note").hidden = false;
  }
  updateCount();
  previewPrompt();
}

function settings(model) {
  const topK = $("top_k").value.trim();
  return {
    instruction: $("instruction").value, input: $("input").value, style: $("style").value, model,
    temperature: $("temperature").value, top_k: topK === "" ? null : topK, max_new_tokens: $("max_new_tokens").value,
  };
}

function updateCount() {
  const n = $("instruction").value.length + $("input").value.length;
  $("count").textContent = `${n.toLocaleString()} / ${info.limits.max_chars.toLocaleString()} characters; ` +
    `at most ${info.limits.max_new_tokens} new tokens`;
}

function showPrompt(prompt, tokens) {
  $("prompt").textContent = prompt;
  $("prompt-tokens").textContent = `(${tokens} tokens)`;
}

let previewTimer = null;
function previewPrompt() {  // the template filled in as you type: what the model will be fed
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    if (!$("instruction").value.trim()) return;
    const model = $("model").value === "compare" ? "finetuned" : $("model").value;
    const reply = await fetch("/api/prompt", {method: "POST", headers: {"Content-Type": "application/json"},
                                              body: JSON.stringify(settings(model))});
    if (reply.ok) {
      const data = await reply.json();
      showPrompt(data.prompt, data.prompt_tokens);
    }
  }, 300);
}

function resetPanel(panel, visible) {
  panel.hidden = !visible;
  panel.dataset.state = visible ? "waiting" : "";
  panel.querySelector(".label").textContent = "";
  panel.querySelector(".text").textContent = "";
  panel.querySelector(".stats").textContent = "";
  panel.querySelector(".ids").textContent = "";
  panel.tokenIds = [];
}

function handleEvent(panel, entry, event, data) {
  const text = panel.querySelector(".text");
  if (event === "meta") {
    entry.id = data.id;
    panel.querySelector(".label").textContent = `${data.model === "base" ? "Base" : "Finetuned"}: ${data.label}`;
    showPrompt(data.prompt, data.prompt_tokens);
  } else if (event === "queued") {
    panel.dataset.state = "queued";
    panel.querySelector(".stats").textContent = "Waiting: the model is answering someone else…";
  } else if (event === "started") {
    setStatus("Generating…");
    panel.dataset.state = "streaming";
    panel.querySelector(".stats").textContent = "Generating…";
  } else if (event === "token") {
    panel.dataset.state = "streaming";
    text.textContent = data.text;
    panel.tokenIds.push(data.id);
    panel.querySelector(".ids").textContent = panel.tokenIds.join(" ");
    panel.querySelector(".stats").textContent = `${panel.tokenIds.length} tokens…`;
  } else if (event === "done") {
    if (data.tokens > 0 || data.reason !== "stopped") text.textContent = data.text;
    const why = {end_of_text: "the model ended its answer", max_new_tokens: "reached max new tokens",
                 stopped: "stopped"}[data.reason];
    panel.querySelector(".stats").textContent =
      `${panel.tokenIds.length} tokens in ${data.seconds} s (${why})`;
    panel.dataset.state = data.reason === "stopped" ? "stopped" : "done";
  }
}

async function streamAnswer(panel, body, entry) {
  const reply = await fetch("/api/generate", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    signal: entry.controller.signal,
  });
  if (!reply.ok) {
    let message = `The server answered ${reply.status}.`;
    try { message = (await reply.json()).error; } catch (e) { /* keep the status line */ }
    throw new Error(message);
  }
  // Server-sent events: blocks of "event: NAME\ndata: JSON" separated by a blank line.
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) handleEvent(panel, entry, event, JSON.parse(data));
    }
  }
  if (panel.dataset.state !== "done" && panel.dataset.state !== "stopped") {
    throw new Error("The answer broke off (was the server stopped?).");
  }
}

async function ask(submitEvent) {
  submitEvent.preventDefault();
  if (running.length) return;
  const choice = $("model").value;
  const keys = choice === "compare" ? ["base", "finetuned"] : [choice];
  panels.forEach((panel, i) => resetPanel(panel, i < keys.length));
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("Sending…");
  running = keys.map(() => ({controller: new AbortController(), id: null}));
  const results = await Promise.allSettled(
    keys.map((key, i) => streamAnswer(panels[i], settings(key), running[i])));
  const failed = results.find((r) => r.status === "rejected" && r.reason.name !== "AbortError");
  const stopped = panels.some((panel) => panel.dataset.state === "stopped") ||
    results.some((r) => r.status === "rejected" && r.reason.name === "AbortError");
  if (failed) {
    setStatus(failed.reason.message, true);
    panels.forEach((panel) => { if (panel.dataset.state !== "done") panel.dataset.state = "error"; });
  } else {
    setStatus(stopped ? "Stopped." : "Done.");
  }
  running = [];
  $("send").disabled = false;
  $("stop").disabled = true;
}

async function stop() {
  const now = running;
  await Promise.allSettled(now.filter((entry) => entry.id).map((entry) => fetch("/api/stop", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({id: entry.id}),
  })));
  // An answer still waiting for its first event has no id yet: closing its stream frees the server too.
  now.forEach((entry) => { if (!entry.id) entry.controller.abort(); });
}

$("ask").addEventListener("submit", ask);
$("stop").addEventListener("click", stop);
for (const id of ["instruction", "input"]) {
  $(id).addEventListener("input", () => { updateCount(); previewPrompt(); });
}
$("style").addEventListener("change", previewPrompt);
$("model").addEventListener("change", previewPrompt);
loadInfo().catch((err) => setStatus(`Could not reach the chat server: ${err.message}`, true));
