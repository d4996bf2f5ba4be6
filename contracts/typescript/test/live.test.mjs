// The client contract's scenario against a LIVE orchestratord (NERVE-4116), started by
// test_harness/integration/test_typescript_client.py, which passes ORCHESTRATORD_URL and
// ORCHESTRATORD_TOKEN. Skipped when they are absent (e.g. `npm test` alone).
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, NrvError } from "../dist/index.js";

const URL_ = process.env.ORCHESTRATORD_URL;
const TOKEN = process.env.ORCHESTRATORD_TOKEN;
const skip = URL_ ? false : "ORCHESTRATORD_URL is not set (run by test_typescript_client.py)";
const CONTRACT = { type: "object", properties: { summary: { type: "string" } },
                   required: ["summary"] };

function client(fetch) {
  return createClient({ baseUrl: URL_, token: TOKEN, ...(fetch ? { fetch } : {}) });
}

test("discover, enqueue with a JSON-schema contract, stream tokens to done", { skip },
     async () => {
  const nrv = client();
  const caps = await nrv.llm.capabilities();
  const model = caps.models.find((m) => m.id.startsWith("mock:"))?.id;
  assert.equal(model, "mock:echo-1");
  const job = await nrv.llm.enqueue({
    model, prompt: "Summarize ADR-013 in <=80 words.", response_contract: CONTRACT,
    attachments: { "adr-013.md": new Blob(["# ADR-013"], { type: "text/markdown" }) },
    metadata: { request_id: "req-42", repo: "nerve" },
  });
  assert.deepEqual([job.model, typeof job.id, job.enqueued_at.endsWith("Z")],
                   ["mock:echo-1", "string", true]);
  const events = [];
  for await (const evt of nrv.llm.stream(job.id)) events.push(evt);
  const types = events.map((e) => e.type);
  assert.equal(types.at(-1), "done");
  assert.equal(types.includes("error"), false);
  assert.ok(types.filter((t) => t === "token").length > 0);
  const text = events.filter((e) => e.type === "token").map((e) => e.text).join("");
  assert.equal(typeof JSON.parse(text).summary, "string");
  // re-read from the end: 204, nothing
  const again = [];
  for await (const evt of nrv.llm.stream(job.id, { lastEventId: 1_000_000 })) again.push(evt);
  assert.deepEqual(again, []);
});

test("an unknown model is ERR_INVALID_MODEL", { skip }, async () => {
  await assert.rejects(client().llm.enqueue({ model: "mock:nope", prompt: "x" }),
                       (err) => err instanceof NrvError && err.code === "ERR_INVALID_MODEL"
                         && err.serverCode === "INVALID_MODEL" && err.status === 400);
});

test("cancel mid-stream ends the stream with an error event", { skip }, async () => {
  const nrv = client();
  const job = await nrv.llm.enqueue({ model: "mock:echo-1", prompt: "a long story" });
  const events = [];
  for await (const evt of nrv.llm.stream(job.id)) {
    events.push(evt);
    if (events.filter((e) => e.type === "token").length === 3) await nrv.llm.cancel(job.id);
  }
  const last = events.at(-1);
  assert.deepEqual([last.type, last.code], ["error", "CANCELLED"]);
  assert.equal(events.some((e) => e.type === "done"), false);
  await nrv.llm.cancel(job.id); // finished: 200, still fine
});

test("a dropped connection throws ERR_STREAM_DISCONNECTED, and the stream resumes",
     { skip }, async () => {
  // a fetch whose job stream breaks after its first three events
  const dropping = async (input, init) => {
    const res = await fetch(input, init);
    if (!String(input).endsWith("/events") || !res.body) return res;
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let seen = "";
    const body = new ReadableStream({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) { controller.close(); return; }
        const text = seen + dec.decode(value, { stream: true });
        const cut = text.split("\n\n").slice(0, 3).join("\n\n");
        if (text.split("\n\n").length > 3) {
          controller.enqueue(new TextEncoder().encode(cut.slice(seen.length) + "\n\n"));
          await reader.cancel();
          controller.error(new TypeError("network connection lost"));
          return;
        }
        seen = text;
        controller.enqueue(value);
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const job = await client().llm.enqueue({ model: "mock:echo-1", prompt: "drop me" });
  const before = [];
  let cut;
  try {
    for await (const evt of client(dropping).llm.stream(job.id)) before.push(evt);
  } catch (err) {
    cut = err;
  }
  assert.ok(cut instanceof NrvError);
  assert.deepEqual([cut.code, cut.jobId, cut.retriable, before.length],
                   ["ERR_STREAM_DISCONNECTED", job.id, true, 3]);
  const rest = [];
  for await (const evt of client().llm.stream(job.id, { lastEventId: cut.lastEventId })) {
    rest.push(evt);
  }
  assert.equal(rest.at(-1).type, "done");
  const whole = [];
  for await (const evt of client().llm.stream(job.id)) whole.push(evt);
  assert.deepEqual([...before, ...rest], whole);
});
