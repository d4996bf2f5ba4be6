// Offline tests of the package (NERVE-4113, NERVE-4114, NERVE-4115): the fetch is
// injected, so these need no server. The live scenario is test/live.test.mjs.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, NrvError, SseParser } from "../dist/index.js";

const enc = new TextEncoder();
const STREAM = 'id: 0\nevent: log\ndata: {"type":"log","message":"started"}\n\n'
  + ": keep-alive\n\n"
  + 'event: narration\ndata: {"type":"narration","text":"thinking"}\n\n'
  + 'id: 1\r\nevent: token\r\ndata: {"type":"token","text":"h\\u00e9"}\r\n\r\n'
  + 'id: 2\revent: done\rdata: {"type":"done"}\r\r'
  + 'id: 3\nevent: token\ndata: {"type":"token","text":"late"}\n\n';

/** A Response whose body yields `chunks`, then fails with `failure` if given. */
function sse(chunks, { failure, onCancel } = {}) {
  let i = 0;
  const body = new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(enc.encode(chunks[i++]));
      else if (failure) controller.error(failure);
      else controller.close();
    },
    cancel() { onCancel?.(); },
  });
  return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
}

function recorder(answer) {
  const seen = [];
  const fetch = async (url, init = {}) => {
    seen.push({ url: String(url), method: init.method ?? "GET", headers: init.headers ?? {},
                body: init.body });
    return answer(String(url), init);
  };
  return { seen, fetch };
}

async function collect(iterable) {
  const out = [];
  for await (const e of iterable) out.push(e);
  return out;
}

test("every split of the bytes parses to the same events [NERVE-4114]", () => {
  const whole = new SseParser().feed(STREAM);
  for (let k = 0; k <= STREAM.length; k++) {
    const p = new SseParser();
    assert.deepEqual([...p.feed(STREAM.slice(0, k)), ...p.feed(STREAM.slice(k))], whole);
  }
  assert.deepEqual(whole.map((e) => [e.event, e.id]), [
    ["log", "0"], ["narration", undefined], ["token", "1"], ["done", "2"], ["token", "3"]]);
});

test("stream yields typed events until done, sending Last-Event-ID [NERVE-4114]", async () => {
  const { seen, fetch } = recorder(() => sse([STREAM.slice(0, 40), STREAM.slice(40)]));
  const nrv = createClient({ baseUrl: "http://o/", token: "tok", fetch });
  const got = await collect(nrv.llm.stream("stp 1", { lastEventId: 4 }));
  assert.deepEqual(got, [{ type: "log", message: "started" },
                         { type: "narration", text: "thinking" },
                         { type: "token", text: "hé" }, { type: "done" }]);
  assert.equal(seen[0].url, "http://o/v1/llm/jobs/stp%201/events");
  assert.deepEqual(seen[0].headers, { authorization: "Bearer tok",
                                      accept: "text/event-stream", "last-event-id": "4" });
});

test("a 204 after the end yields nothing [NERVE-4114]", async () => {
  const { fetch } = recorder(() => new Response(null, { status: 204 }));
  assert.deepEqual(await collect(createClient({ baseUrl: "http://o", fetch }).llm.stream("j")),
                   []);
});

test("a stream cut before done throws ERR_STREAM_DISCONNECTED once [NERVE-4114]", async () => {
  for (const failure of [undefined, new TypeError("terminated")]) {
    const { seen, fetch } = recorder(() => sse([STREAM.slice(0, STREAM.indexOf("id: 2"))],
                                               { failure }));
    const got = [];
    await assert.rejects(async () => {
      for await (const e of createClient({ baseUrl: "http://o", fetch }).llm.stream("j1")) {
        got.push(e.type);
      }
    }, (err) => {
      assert.ok(err instanceof NrvError);
      assert.deepEqual([err.code, err.jobId, err.lastEventId, err.retriable],
                       ["ERR_STREAM_DISCONNECTED", "j1", 1, true]);
      return true;
    });
    assert.deepEqual([got, seen.length], [["log", "narration", "token"], 1]);
  }
});

test("leaving the loop early cancels the response body [NERVE-4114]", async () => {
  let cancelled = false;
  const { fetch } = recorder(() => sse([STREAM.slice(0, 60), STREAM.slice(60)],
                                       { onCancel: () => { cancelled = true; } }));
  for await (const e of createClient({ baseUrl: "http://o", fetch }).llm.stream("j")) {
    assert.equal(e.type, "log");
    break;
  }
  assert.equal(cancelled, true);
});

test("refusals carry the contract's names [NERVE-4115]", async () => {
  const answers = {
    INVALID_MODEL: 400, CONTEXT_BUDGET: 400, NOT_FOUND: 404,
  };
  const got = [];
  for (const [code, status] of Object.entries(answers)) {
    const { fetch } = recorder(() => Response.json(
      { code, message: `m ${code}`, retriable: false, data: { field: "model" } }, { status }));
    try {
      await createClient({ baseUrl: "http://o", fetch }).llm.enqueue({ model: "x", prompt: "p" });
    } catch (err) {
      assert.ok(err instanceof NrvError && err instanceof Error);
      got.push([err.code, err.serverCode, err.status, err.message, err.data]);
    }
  }
  const { fetch } = recorder(() => new Response("<html>bad gateway</html>", { status: 502 }));
  await assert.rejects(createClient({ baseUrl: "http://o", fetch }).llm.capabilities(),
                       { name: "NrvError", code: "ERR_SERVER",
                         message: "HTTP 502: <html>bad gateway</html>" });
  assert.deepEqual(got, [
    ["ERR_INVALID_MODEL", "INVALID_MODEL", 400, "m INVALID_MODEL", { field: "model" }],
    ["ERR_CONTEXT_BUDGET", "CONTEXT_BUDGET", 400, "m CONTEXT_BUDGET", { field: "model" }],
    ["ERR_SERVER", "NOT_FOUND", 404, "m NOT_FOUND", { field: "model" }]]);
});

test("enqueue sends attachments base64 and nothing the caller did not give [NERVE-4113]",
     async () => {
  const { seen, fetch } = recorder(() => Response.json(
    { id: "stp_1", model: "m", enqueued_at: "2026-01-01T00:00:00Z" }, { status: 201 }));
  const nrv = createClient({ baseUrl: "http://o", fetch });
  const job = await nrv.llm.enqueue({
    model: "hf:org/m@q", prompt: "exact\u00a0text",
    attachments: { "a.md": new Blob(["# hi"]), "b.bin": new Uint8Array([0, 255]), "c": "é" },
    metadata: { request_id: "req-42" },
  });
  assert.deepEqual(job, { id: "stp_1", model: "m", enqueued_at: "2026-01-01T00:00:00Z" });
  assert.deepEqual([seen[0].method, seen[0].url, seen[0].headers], [
    "POST", "http://o/v1/llm/jobs", { accept: "application/json",
                                      "content-type": "application/json" }]);
  assert.deepEqual(JSON.parse(seen[0].body), {
    model: "hf:org/m@q", prompt: "exact\u00a0text", metadata: { request_id: "req-42" },
    attachments: { "a.md": "IyBoaQ==", "b.bin": "AP8=", "c": "w6k=" } });
});
