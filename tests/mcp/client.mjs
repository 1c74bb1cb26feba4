// Drives `nbbatch mcp` with the official MCP TypeScript SDK client over
// its stdio transport, for tests/bats/mcp.bats.
//
//   node client.mjs generate NBBATCH DB PROMPTS-FILE
//       generate_images for every line of PROMPTS-FILE with a progress
//       token; prints {"paths": [...], "progress": [...], ...} and exits 0
//       when as many paths came back as prompts, each of its own job.
//   node client.mjs badkey NBBATCH DB
//       generate_images must come back as an error result naming the fix
//       (and never the key); then ping and list_batches must still work.
//
// The server inherits this process's environment (GEMINI_API_KEY,
// GEMINI_BASE_URL pointing at the simulator).
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [mode, nbbatch, db, promptFile] = process.argv.slice(2);

function fail(message, extra) {
    console.log(JSON.stringify({ ok: false, message, ...extra }));
    process.exit(1);
}

async function connect() {
    const transport = new StdioClientTransport({
        command: nbbatch,
        args: ["mcp", "--db", db],
        env: { ...process.env },
        stderr: "inherit",
    });
    const client = new Client({ name: "nbbatch-test", version: "1.0.0" });
    await client.connect(transport);
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name).sort().join(",");
    if (names !== "cancel,generate_images,job_status,list_batches")
        fail("unexpected tool list", { names });
    return client;
}

function textOf(result) {
    return result.content.map((c) => c.text ?? "").join("\n");
}

async function generate(client) {
    const prompts = readFileSync(promptFile, "utf8").split("\n")
        .filter((line) => line.length > 0);
    const progress = [];
    const result = await client.callTool(
        { name: "generate_images",
          arguments: { prompts, batch: "sdk", wait_seconds: 90 } },
        undefined,
        { onprogress: (p) => progress.push(p.progress), timeout: 120000,
          resetTimeoutOnProgress: true });
    const data = result.structuredContent ?? {};
    const paths = data.paths ?? [];
    const jobs = new Set((data.jobs ?? []).map((j) => j.job_id));
    const out = { ok: true, paths, progress, done: data.done,
                  total: data.total, text: textOf(result) };
    if (result.isError)
        fail("generate_images returned an error", out);
    if (paths.length !== prompts.length || jobs.size !== prompts.length)
        fail(`${paths.length} paths for ${prompts.length} prompts`, out);
    for (let i = 1; i < progress.length; i++) {
        if (progress[i] <= progress[i - 1])
            fail("progress went backwards", out);
    }
    console.log(JSON.stringify(out));
}

async function badKey(client) {
    const result = await client.callTool(
        { name: "generate_images",
          arguments: { prompts: ["a bad key test"], wait_seconds: 30 } },
        undefined, { timeout: 60000 });
    const text = textOf(result);
    const out = { ok: true, isError: result.isError === true, text };
    if (!result.isError)
        fail("a bad key did not give an error result", out);
    if (!/GEMINI_API_KEY/.test(text) || !/key/i.test(text))
        fail("the error does not name the fix", out);
    if (process.env.GEMINI_API_KEY && text.includes(process.env.GEMINI_API_KEY))
        fail("the key was echoed", out);
    await client.ping();
    const batches = await client.callTool(
        { name: "list_batches", arguments: {} });
    if (batches.isError || !Array.isArray(batches.structuredContent?.batches))
        fail("list_batches failed after the error", out);
    out.batches = batches.structuredContent.batches.length;
    console.log(JSON.stringify(out));
}

const client = await connect();
try {
    if (mode === "generate")
        await generate(client);
    else if (mode === "badkey")
        await badKey(client);
    else
        fail(`unknown mode ${mode}`);
} finally {
    await client.close();
}
