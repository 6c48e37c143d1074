// Drives an OpenAI-compatible server with the official OpenAI Node client and prints one
// JSON object with what came back (read by engine/server's RunOpenAINodeClient).
//
// Usage: node client.mjs [BASE_URL [MODEL [API_KEY]]]
// Each argument falls back to an environment variable: OPENAI_BASE_URL (e.g.
// http://127.0.0.1:8000/v1), OPENAI_MODEL, OPENAI_API_KEY. CLIENT_MAX_TOKENS sets
// max_tokens (default 16).
//
// It streams a chat completion and a completion, both with stream_options.include_usage,
// and asks for each again without streaming, greedy (temperature 0, fixed seed), so the
// caller can check that the streamed text equals the whole one.
import OpenAI from "openai";
import { VERSION } from "openai/version";

// Only file uploads need a global File; Node 18 lacks it.
globalThis.File ??= (await import("node:buffer")).File;

const [argURL, argModel, argKey] = process.argv.slice(2);
const baseURL = argURL || process.env.OPENAI_BASE_URL;
const model = argModel || process.env.OPENAI_MODEL;
const apiKey = argKey || process.env.OPENAI_API_KEY || "EMPTY";
const maxTokens = Number(process.env.CLIENT_MAX_TOKENS || 16);
if (!baseURL || !model) {
  console.error("usage: node client.mjs BASE_URL MODEL [API_KEY] (or OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY)");
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
const common = { model, max_tokens: maxTokens, temperature: 0, seed: 1234 };

async function chat() {
  const params = { ...common, messages: [{ role: "user", content: "Tell me about prefix caching." }] };
  const run = { text: "", chunks: 0, finishReason: null, usage: null, firstRole: null };
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    run.chunks++;
    for (const c of chunk.choices) {
      if (c.delta?.role && run.firstRole === null) run.firstRole = c.delta.role;
      run.text += c.delta?.content ?? "";
      if (c.finish_reason) run.finishReason = c.finish_reason;
    }
    if (chunk.usage) run.usage = chunk.usage;
  }
  const whole = await client.chat.completions.create(params);
  run.wholeText = whole.choices[0].message.content;
  run.wholeFinishReason = whole.choices[0].finish_reason;
  run.wholeUsage = whole.usage;
  return run;
}

async function completion() {
  const params = { ...common, prompt: "The engine answers one token at a time" };
  const run = { text: "", chunks: 0, finishReason: null, usage: null };
  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    run.chunks++;
    for (const c of chunk.choices) {
      run.text += c.text ?? "";
      if (c.finish_reason) run.finishReason = c.finish_reason;
    }
    if (chunk.usage) run.usage = chunk.usage;
  }
  const whole = await client.completions.create(params);
  run.wholeText = whole.choices[0].text;
  run.wholeFinishReason = whole.choices[0].finish_reason;
  run.wholeUsage = whole.usage;
  return run;
}

try {
  const result = { clientVersion: VERSION, chat: await chat(), completion: await completion() };
  const models = await client.models.list();
  result.models = models.data.map((m) => m.id);
  console.log(JSON.stringify(result));
} catch (err) {
  console.error(`openai client error: ${err?.status ?? ""} ${err?.message ?? err}`);
  process.exit(1);
}
