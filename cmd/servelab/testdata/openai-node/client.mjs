// Streams a chat completion and a completion from an OpenAI-compatible endpoint with the
// official OpenAI Node client and prints what came back as JSON.
// Usage: node client.mjs BASE_URL MODEL API_KEY
import OpenAI from "openai";

const [baseURL, model, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: apiKey || "none", maxRetries: 0 });

const chat = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Tell me about prefix caching." }],
  max_tokens: 16,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
let chatText = "";
let chatChunks = 0;
let chatUsage = null;
let chatFinish = null;
for await (const chunk of chat) {
  chatChunks++;
  for (const c of chunk.choices) {
    chatText += c.delta?.content ?? "";
    if (c.finish_reason) chatFinish = c.finish_reason;
  }
  if (chunk.usage) chatUsage = chunk.usage;
}

const whole = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Tell me about prefix caching." }],
  max_tokens: 16,
  temperature: 0,
});

const completion = await client.completions.create({
  model,
  prompt: "The engine answers one token at a time",
  max_tokens: 12,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of completion) {
  for (const c of chunk.choices) text += c.text ?? "";
  if (chunk.usage) usage = chunk.usage;
}
const models = await client.models.list();

console.log(JSON.stringify({
  chatText, chatChunks, chatUsage, chatFinish,
  wholeChatText: whole.choices[0].message.content,
  completionText: text, completionUsage: usage,
  models: models.data.map((m) => m.id),
}));
