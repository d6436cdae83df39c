// Drives `flashlm serve` with the official `openai` npm client: completions, chat, and both
// streamed; greedy text must equal the expected strings (from `flashlm generate`).
// Usage: node serve_openai_client.mjs BASE_URL EXPECTED_JSON
// EXPECTED_JSON: {"prompt", "completion", "chat_user", "chat"}; exit 0 on success, 1 on failure.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(process.env.OPENAI_NODE_PREFIX + "/node_modules/");
const OpenAI = require("openai").default ?? require("openai");
const [base, expectedPath] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "test-key", maxRetries: 0 });

let failures = 0;
function check(what, got, want) {
  if (got === want) {
    console.log(`ok   ${what}`);
  } else {
    failures++;
    console.log(`FAIL ${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

const models = await client.models.list();
check("models.list has one model", models.data.length, 1);

const c = await client.completions.create({
  model: models.data[0].id, prompt: expected.prompt, max_tokens: 30, temperature: 0 });
check("completions text", c.choices[0].text, expected.completion);
check("completions finish_reason", c.choices[0].finish_reason, "length");
check("completions usage", c.usage.completion_tokens, 30);

let streamed = "";
let chunks = 0;
const cs = await client.completions.create({
  model: models.data[0].id, prompt: expected.prompt, max_tokens: 30, temperature: 0, stream: true });
for await (const chunk of cs) { streamed += chunk.choices[0]?.text ?? ""; chunks++; }
check("completions streamed text", streamed, expected.completion);
// The text chunk(s) and the last chunk (finish_reason, usage); the tiny model may produce the
// whole text before the first event is written, so the text may come in one piece.
check("completions streamed as text and final chunks", chunks >= 2, true);

const messages = [{ role: "user", content: expected.chat_user }];
const ch = await client.chat.completions.create({
  model: models.data[0].id, messages, max_tokens: 30, temperature: 0 });
check("chat content", ch.choices[0].message.content, expected.chat);
check("chat role", ch.choices[0].message.role, "assistant");

let chatStreamed = "";
const chs = await client.chat.completions.create({
  model: models.data[0].id, messages, max_tokens: 30, temperature: 0, stream: true });
for await (const chunk of chs) chatStreamed += chunk.choices[0]?.delta?.content ?? "";
check("chat streamed content", chatStreamed, expected.chat);

try {
  await client.completions.create({ model: "x", prompt: "x", max_tokens: 0 });
  check("max_tokens 0 refused", "accepted", "400");
} catch (e) {
  check("max_tokens 0 refused with 400", e.status, 400);
}
process.exit(failures ? 1 : 0);
