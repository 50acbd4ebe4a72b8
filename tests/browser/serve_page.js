// The page of `patchcore serve` in a real browser (Debian's chromium, headless, driven by
// puppeteer-core): load it, upload test images, wait for each overlay and score, compare the
// score shown with the API's, move the threshold slider (the verdicts change, no new request).
//
//   node tests/browser/serve_page.js BUILD/patchcore [SCREENSHOT_DIR]
//
// Exit 0: passed; 1: failed; 77: skipped (puppeteer-core or chromium missing: run scripts/setup).
"use strict";
const {spawn, execFileSync} = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

let puppeteer;
try {
  puppeteer = require(path.join(__dirname, "node_modules", "puppeteer-core"));
} catch (e) {
  console.log("SKIP: puppeteer-core is not installed in tests/browser (run scripts/setup)");
  process.exit(77);
}
const chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p));
if (!chromium) {
  console.log("SKIP: no chromium (run scripts/setup)");
  process.exit(77);
}

const [binary, shots] = process.argv.slice(2);
const failures = [];
function check(ok, message) {
  if (!ok) failures.push(message);
  console.log((ok ? "ok   " : "FAIL ") + message);
}

// Demo data and a small fast model, fitted with the CLI.
function prepare(work) {
  execFileSync(binary, ["demo", "--out", work, "--backbone", "mobilenet_v2", "--image-size", "128",
                        "--coreset-ratio", "0.1", "--threads", "2"], {stdio: ["ignore", "ignore", "inherit"]});
  const models = path.join(work, "models");
  fs.mkdirSync(models);
  fs.copyFileSync(path.join(work, "model.patchcore"), path.join(models, "demo.patchcore"));
  const test = path.join(work, "data", "test");
  // The first image of each kind (good and two defects), named for its kind.
  const upload = path.join(work, "upload");
  fs.mkdirSync(upload);
  const kinds = ["good", ...fs.readdirSync(test).filter((k) => k !== "good").sort().slice(0, 2)];
  const images = kinds.map((kind) => {
    const first = fs.readdirSync(path.join(test, kind)).sort()[0];
    const to = path.join(upload, kind + "_" + first);
    fs.copyFileSync(path.join(test, kind, first), to);
    return to;
  });
  return {models, images};
}

function startServer(models) {
  const server = spawn(binary, ["serve", "--models", models, "--port", "0", "--threads", "2"],
                       {stdio: ["ignore", "pipe", "ignore"]});
  return new Promise((resolve, reject) => {
    let out = "";
    server.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)\//);
      if (m) resolve({server, base: m[1]});
    });
    server.on("exit", (code) => reject(new Error("patchcore serve exited with " + code)));
  });
}

async function apiScore(base, file) {
  const body = {inputs: [{name: "image", datatype: "BYTES", shape: [1], data: [fs.readFileSync(file).toString("base64")]}]};
  const r = await fetch(base + "/v2/models/demo/infer", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const j = await r.json();
  return j.outputs.find((o) => o.name === "pred_score").data[0];
}

async function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "patchcore-page-"));
  let server, browser;
  try {
    const {models, images} = prepare(path.join(work, "demo"));
    const started = await startServer(models);
    server = started.server;
    browser = await puppeteer.launch({executablePath: chromium, headless: true,
                                      args: ["--no-sandbox", "--disable-gpu", "--no-proxy-server"]});
    const page = await browser.newPage();
    await page.setViewport({width: 1280, height: 900});
    let inferRequests = 0;
    page.on("request", (r) => { if (r.url().endsWith("/infer")) inferRequests++; });
    await page.goto(started.base + "/");
    await page.waitForFunction(() => document.querySelector("#model").options.length > 0 && document.querySelector("#info table"));
    check(await page.$eval("#model", (s) => s.value) === "demo", "the model list offers the demo model");

    await (await page.$("#files")).uploadFile(...images);
    await page.waitForFunction((n) => document.querySelectorAll(".card[data-score] canvas.overlay[data-painted]").length === n,
                               {timeout: 120000}, images.length);
    check(inferRequests === images.length, `one infer request per image (${inferRequests})`);
    const shown = await page.$$eval(".card", (cards) => cards.map((c) => ({
      name: c.querySelector("h3").textContent, score: Number(c.dataset.score),
      text: c.querySelector(".score").textContent, verdict: c.querySelector(".verdict").textContent})));
    for (const file of images) {
      const s = shown.find((c) => c.name === path.basename(file));
      const api = await apiScore(started.base, file);
      check(s && Math.abs(s.score - api) <= 1e-6 && s.text === api.toFixed(4),
            `${path.basename(file)}: score shown ${s && s.text} equals the API's ${api}`);
      check(s && s.verdict === (api >= 0.5 ? "anomalous" : "normal"), `${path.basename(file)}: verdict ${s && s.verdict}`);
    }
    // The overlay is the image with colour on it: it differs from the image.
    const differs = await page.$$eval(".card", (cards) => cards.map((c) => {
      const a = c.querySelector("canvas.image"), b = c.querySelector("canvas.overlay");
      const pa = a.getContext("2d").getImageData(0, 0, a.width, a.height).data;
      const pb = b.getContext("2d").getImageData(0, 0, b.width, b.height).data;
      let d = 0;
      for (let i = 0; i < pa.length; i++) d += Math.abs(pa[i] - pb[i]);
      return a.width === b.width && a.height === b.height && d / pa.length > 5;
    }));
    check(differs.every((x) => x), "each overlay is coloured over its image at the image's size");
    if (shots) {
      fs.mkdirSync(shots, {recursive: true});
      await page.screenshot({path: path.join(shots, "serve_page.png"), fullPage: true});
    }

    // The slider at 0: everything is anomalous, recoloured without asking the server again.
    const before = inferRequests;
    await page.$eval("#threshold", (s) => { s.value = "0"; s.dispatchEvent(new Event("input")); });
    const verdicts = await page.$$eval(".card .verdict", (v) => v.map((e) => e.textContent));
    check(verdicts.every((v) => v === "anomalous"), "threshold 0: every image anomalous");
    check(inferRequests === before, "the slider makes no request");
    await page.$eval("#threshold", (s) => { s.value = "0.4"; s.dispatchEvent(new Event("input")); });
    if (shots) await page.screenshot({path: path.join(shots, "serve_threshold.png"), fullPage: true});
  } finally {
    if (browser) await browser.close();
    if (server) server.kill("SIGTERM");
    fs.rmSync(work, {recursive: true, force: true});
  }
  if (failures.length) {
    console.log(failures.length + " check(s) failed");
    process.exit(1);
  }
  console.log("all checks passed");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
