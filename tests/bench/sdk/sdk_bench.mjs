// The same job as `nbbatch run`, done the way a short script with Google's
// official JavaScript SDK does it: N prompts, C at a time, each answer's
// final image written to a file.  Prints CPU per image and peak memory.
// Usage: node sdk_bench.mjs N CONCURRENCY MODEL SIZE OUTDIR
// Env: GEMINI_BASE_URL (the simulator), GEMINI_API_KEY.
import { GoogleGenAI } from '@google/genai';
import { mkdirSync, writeFileSync } from 'node:fs';

const [n, conc, model, size, outdir] = process.argv.slice(2);
const total = Number(n), concurrency = Number(conc);
mkdirSync(outdir, { recursive: true });
const ai = new GoogleGenAI({
  apiKey: process.env.GEMINI_API_KEY,
  httpOptions: { baseUrl: process.env.GEMINI_BASE_URL },
});

let next = 0, done = 0, failed = 0;
const cpu0 = process.cpuUsage();
const t0 = Date.now();

async function one(i) {
  const res = await ai.models.generateContent({
    model,
    contents: `sdk bench prompt ${i}`,
    config: {
      responseModalities: ['TEXT', 'IMAGE'],
      imageConfig: { aspectRatio: '1:1', imageSize: size },
    },
  });
  const parts = res.candidates?.[0]?.content?.parts ?? [];
  const img = parts.filter((p) => p.inlineData && !p.thought).pop();
  if (!img) throw new Error('no image');
  writeFileSync(`${outdir}/${i}.png`, Buffer.from(img.inlineData.data, 'base64'));
}

async function worker() {
  while (next < total) {
    const i = next++;
    try { await one(i); done++; } catch (e) { failed++; }
  }
}

await Promise.all(Array.from({ length: concurrency }, worker));
const cpu = process.cpuUsage(cpu0);
const cpuMs = (cpu.user + cpu.system) / 1000;
const rssMb = process.resourceUsage().maxRSS / 1024;
console.log(`sdk_images=${done} sdk_failed=${failed} ` +
  `sdk_wall_s=${((Date.now() - t0) / 1000).toFixed(2)} ` +
  `sdk_cpu_ms_per_image=${(cpuMs / Math.max(done, 1)).toFixed(1)} ` +
  `sdk_peak_mb=${rssMb.toFixed(1)}`);
