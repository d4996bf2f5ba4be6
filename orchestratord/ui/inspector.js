// orchestratord run inspector (REC-7060..7066). Plain JavaScript, no build step, no
// dependency: it talks to this server's API with the bearer token the user typed
// (sessionStorage, sent in the Authorization header), and reads a Step's frames with
// EventSource through a stream ticket (POST /v1/steps/{id}/stream-ticket). Every value
// from the API goes into the page as text, never as HTML.

const TOKEN_KEY = "orchestratord.token";
const PAGE = 20;           // runs per page
const MAX_FRAMES = 2000;   // frames listed at most (the rest are counted)
const MAX_TOKENS = 5000;   // tokens compared and shown at most per side
const FRAME_EVENTS = ["started", "token", "tool_suggest", "fact", "metrics", "narration",
  "checkpoint", "escalation", "end", "error"];

const $ = (id) => document.getElementById(id);
const state = { after: null, next: null, stream: null };

class ApiError extends Error {
  constructor(status, envelope) {
    super(`${envelope.code || status}: ${envelope.message || ""}`);
    this.status = status;
    this.envelope = envelope;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers(extra) {
  const h = { ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers) });
  if (resp.status === 401) { showLogin("The server refused the token."); throw new ApiError(401, {}); }
  if (!resp.ok) {
    let env = {};
    try { env = await resp.json(); } catch { env = { message: resp.statusText }; }
    throw new ApiError(resp.status, env);
  }
  return resp;
}

function nextAfter(resp) {
  const link = resp.headers.get("Link") || "";
  const m = link.match(/<([^>]*)>;\s*rel="next"/);
  return m ? new URL(m[1], location.origin).searchParams.get("after") : null;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function linkButton(text, onClick, cls) {
  const b = el("button", text, `link ${cls || ""}`.trim());
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return;
  $("error").textContent = String(err.message || err);
}

function showLogin(message) {
  $("app").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget").hidden = !token();
}

// -- runs (REC-7062) ---------------------------------------------------------------------

async function loadRuns(after) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if ($("filter-mode").value) q.set("mode", $("filter-mode").value);
  if ($("filter-status").value) q.set("status", $("filter-status").value);
  if (after) q.set("after", after);
  const resp = await api(`/v1/runs?${q}`);
  const runs = await resp.json();
  showApp();
  state.after = after;
  state.next = nextAfter(resp);
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const run of runs) {
    const tr = el("tr");
    tr.dataset.runId = run.run_id;
    const cell = el("td");
    cell.append(linkButton(run.run_id, () => openRun(run.run_id).catch(showError), "run-link"));
    tr.append(cell, el("td", run.flow_id), el("td", run.mode), el("td", run.status),
      el("td", Object.values(run.steps).reduce((a, b) => a + b, 0)),
      el("td", `${run.usage.tokens_in}/${run.usage.tokens_out}`),
      el("td", run.usage.cost_usd.toFixed(6)), el("td", run.created_at),
      el("td", run.replay_of || ""));
    body.append(tr);
  }
  if (!runs.length) {
    const tr = el("tr");
    tr.append(el("td", "no runs"));
    body.append(tr);
  }
  $("runs-first").disabled = !after;
  $("runs-next").disabled = !state.next;
}

// -- a run's timeline (REC-7063) -----------------------------------------------------------

async function allSteps(runId) {
  let steps = [];
  let after = null;
  do {
    const q = new URLSearchParams({ limit: "1000" });
    if (after) q.set("after", after);
    const resp = await api(`/v1/runs/${encodeURIComponent(runId)}/steps?${q}`);
    steps = steps.concat(await resp.json());
    after = nextAfter(resp);
  } while (after);
  return steps;
}

function placementOf(step) {
  const p = step.provenance;
  if (p && (p.replica_id || p.pool_id)) return p.replica_id || p.pool_id;
  if (step.placement) return step.placement.pool_id || step.placement.strategy || "";
  return "";
}

function provenanceOf(step) {
  const p = step.provenance || {};
  const parts = [p.engine || p.executor, p.engine_version, p.seed !== undefined ? `seed ${p.seed}` : "",
    p.finish_reason, p.model_hash ? `model ${p.model_hash.slice(0, 19)}` : ""];
  if (step.replay_of_step) parts.push(`replay of ${step.replay_of_step}`);
  if (step.error) parts.push(`error ${step.error.code}`);
  return parts.filter(Boolean).join(" · ");
}

async function openRun(runId) {
  $("error").textContent = "";
  if (state.stream) state.stream.close();
  $("frames-panel").hidden = true;
  $("compare-panel").hidden = true;
  const run = await (await api(`/v1/runs/${encodeURIComponent(runId)}`)).json();
  const steps = await allSteps(runId);
  for (const tr of $("runs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.runId === runId);
  $("run-panel").hidden = false;
  $("run-id").textContent = run.run_id;
  const meta = $("run-meta");
  meta.replaceChildren();
  const facts = { flow: run.flow_id, mode: run.mode, seed: run.seed, status: run.status,
    created: run.created_at, "replay of": run.replay_of || "-",
    usage: `${run.usage.tokens_in}/${run.usage.tokens_out} tokens, ${run.usage.cost_usd.toFixed(6)} USD, ${run.usage.wall_ms} ms`,
    labels: JSON.stringify(run.labels) };
  for (const [k, v] of Object.entries(facts)) meta.append(el("dt", k), el("dd", v));
  const longest = Math.max(1, ...steps.map((s) => s.usage.wall_ms));
  const body = $("steps").tBodies[0];
  body.replaceChildren();
  steps.forEach((step, i) => {
    const tr = el("tr");
    tr.dataset.stepId = step.step_id;
    const duration = el("td");
    const bar = el("span", "", "bar");
    bar.style.width = `${Math.round((step.usage.wall_ms / longest) * 8)}rem`;
    duration.append(bar, `${step.usage.wall_ms} ms`);
    const actions = el("td");
    actions.append(linkButton("frames", () => showFrames(step.step_id).catch(showError), "frames-link"));
    if (step.replay_of_step) {
      actions.append(" ", linkButton("compare with recording",
        () => compare(step).catch(showError), "compare-link"));
    }
    tr.append(el("td", i + 1), el("td", step.step_id), el("td", step.type),
      el("td", step.status, `status-${step.status}`), duration,
      el("td", `${step.usage.tokens_in}/${step.usage.tokens_out}`),
      el("td", step.usage.cost_usd.toFixed(6)), el("td", placementOf(step)),
      el("td", provenanceOf(step)), actions);
    body.append(tr);
  });
  location.hash = `run=${encodeURIComponent(runId)}`;
}

// -- a step's frames, live (REC-7064) ----------------------------------------------------------

async function showFrames(stepId) {
  if (state.stream) state.stream.close();
  const { ticket } = await (await api(`/v1/steps/${encodeURIComponent(stepId)}/stream-ticket`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })).json();
  $("frames-panel").hidden = false;
  $("frames-step").textContent = stepId;
  $("frames-state").textContent = "reading…";
  const list = $("frames");
  list.replaceChildren();
  let count = 0;
  const es = new EventSource(
    `/v1/steps/${encodeURIComponent(stepId)}/stream?ticket=${encodeURIComponent(ticket)}`);
  state.stream = es;
  const add = (e) => {
    count += 1;
    if (count <= MAX_FRAMES) {
      const li = el("li");
      li.dataset.event = e.type;
      if (e.lastEventId) li.dataset.seq = e.lastEventId;
      li.append(el("span", e.type, "event"), e.data);
      list.append(li);
    }
    if (e.type === "end" || e.type === "error") {
      es.close();
      $("frames-state").textContent = `${count} frames, ended with ${e.type}` +
        (count > MAX_FRAMES ? ` (first ${MAX_FRAMES} shown)` : "");
    }
  };
  for (const name of FRAME_EVENTS) es.addEventListener(name, add);
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) $("frames-state").textContent = `${count} frames`;
  };
}

// -- a replay next to its recording (REC-7065) ------------------------------------------------

function parseSse(text) {
  const frames = [];
  for (const block of text.split("\n\n")) {
    if (!block.trim() || block.startsWith(":")) continue;
    const frame = {};
    for (const line of block.split("\n")) {
      const at = line.indexOf(": ");
      if (at > 0) frame[line.slice(0, at)] = line.slice(at + 2);
    }
    if (frame.event) frames.push(frame);
  }
  return frames;
}

async function framesOf(stepId) {
  const resp = await api(`/v1/steps/${encodeURIComponent(stepId)}/stream`,
    { headers: { Accept: "text/event-stream" } });
  return parseSse(await resp.text());
}

function tokensOf(frames) {
  const tokens = [];
  let error = null;
  for (const f of frames) {
    if (f.event === "token" && tokens.length < MAX_TOKENS) tokens.push(JSON.parse(f.data));
    if (f.event === "error") error = JSON.parse(f.data);
  }
  // a strict_replay that diverged ends with REPLAY_DIVERGED naming the engine's token
  if (error && error.code === "REPLAY_DIVERGED" && error.data && error.data.actual) {
    tokens.push({ ...error.data.actual, i: error.data.index, diverged: true });
  }
  return { tokens, error };
}

function sameToken(a, b) {
  return a !== undefined && b !== undefined && a.id === b.id && (a.b ?? a.t) === (b.b ?? b.t);
}

function firstDivergence(recorded, replayed) {
  const n = Math.max(recorded.length, replayed.length);
  for (let i = 0; i < n; i += 1) if (!sameToken(recorded[i], replayed[i])) return i;
  return -1;
}

function renderTokens(box, tokens, first) {
  box.replaceChildren();
  tokens.forEach((tok, i) => {
    const span = el("span", tok.t === "" ? "·" : tok.t, "tok");
    span.dataset.index = String(i);
    span.title = `#${i} id ${tok.id}`;
    if (i === first) span.classList.add("divergent");
    else if (first >= 0 && i > first) span.classList.add("after");
    box.append(span);
  });
}

async function compare(step) {
  const [recFrames, repFrames] = await Promise.all(
    [framesOf(step.replay_of_step), framesOf(step.step_id)]);
  const rec = tokensOf(recFrames);
  const rep = tokensOf(repFrames);
  const first = firstDivergence(rec.tokens, rep.tokens);
  $("compare-panel").hidden = false;
  $("compare-recording").textContent = step.replay_of_step;
  $("compare-replay").textContent = step.step_id;
  renderTokens($("recording-tokens"), rec.tokens, first);
  renderTokens($("replay-tokens"), rep.tokens, first);
  const summary = $("compare-summary");
  summary.dataset.firstDivergent = String(first);
  if (first < 0) {
    summary.textContent = `identical: ${rec.tokens.length} tokens`;
  } else {
    const show = (t) => (t ? `${JSON.stringify(t.t)} (id ${t.id})` : "nothing");
    summary.textContent = `first divergent token at index ${first}: recording ` +
      `${show(rec.tokens[first])}, replay ${show(rep.tokens[first])}` +
      (rep.error ? ` — the replay ended with ${rep.error.code}` : "");
  }
}

// -- wiring --------------------------------------------------------------------------------------

function start() {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    loadRuns(null).catch(showError);
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  $("runs-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    loadRuns(null).catch(showError);
  });
  $("runs-first").addEventListener("click", () => loadRuns(null).catch(showError));
  $("runs-next").addEventListener("click", () => loadRuns(state.next).catch(showError));
  const wanted = new URLSearchParams(location.hash.slice(1)).get("run");
  loadRuns(null).then(() => (wanted ? openRun(wanted) : null)).catch(showError);
}

start();
