#!/usr/bin/env node
// Converts a TF.js layers model shipped as browserify bundles (npm package nsfwjs 4.4.0:
// model.min.js exports {modelTopology, weightsManifest}; group1-shardXofY.min.js each export one
// base64 string) into the folder layout read by src/keras_onnx.cpp:
//   OUT_DIR/model.json   {"modelTopology": {...}, "weights": [{"name", "shape", "offset"}]}
//   OUT_DIR/weights.bin  float32 little-endian, dequantised; "offset" counts floats
// Usage: node scripts/tfjs_dump.js MODEL_DIR OUT_DIR
'use strict';

const fs = require('fs');
const path = require('path');

function fail(message) {
  process.stderr.write(`tfjs_dump: ${message}\n`);
  process.exit(1);
}

function loadBundle(file) {
  if (!fs.existsSync(file)) fail(`${file}: missing`);
  try {
    return require(path.resolve(file));
  } catch (e) {
    fail(`${file}: cannot load the bundle: ${e.message}`);
  }
}

function elementCount(shape, where) {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    fail(`${where}: bad shape ${JSON.stringify(shape)}`);
  }
  return shape.reduce((a, b) => a * b, 1);
}

function main() {
  const args = process.argv.slice(2);
  if (args.length !== 2) fail('usage: node scripts/tfjs_dump.js MODEL_DIR OUT_DIR');
  const [modelDir, outDir] = args;
  const modelFile = path.join(modelDir, 'model.min.js');
  const model = loadBundle(modelFile);
  if (!model || typeof model.modelTopology !== 'object' || !Array.isArray(model.weightsManifest)) {
    fail(`${modelFile}: does not export {modelTopology, weightsManifest}`);
  }

  // The shards of all groups, concatenated in manifest order, form one byte stream.
  const shards = [];
  for (const group of model.weightsManifest) {
    if (!Array.isArray(group.paths) || !Array.isArray(group.weights)) {
      fail(`${modelFile}: weights group without paths or weights`);
    }
    for (const p of group.paths) {
      const file = path.join(modelDir, `${p}.min.js`);
      const text = loadBundle(file);
      if (typeof text !== 'string') fail(`${file}: does not export a base64 string`);
      shards.push(Buffer.from(text, 'base64'));
    }
  }
  const bytes = Buffer.concat(shards);

  const manifest = [];
  const tensors = [];
  const seen = new Set();
  let byteOffset = 0;
  let floatOffset = 0;
  for (const group of model.weightsManifest) {
    for (const w of group.weights) {
      const where = `${modelFile}: weight ${JSON.stringify(w.name)}`;
      if (typeof w.name !== 'string' || seen.has(w.name)) {
        fail(`${where}: missing or duplicate name`);
      }
      seen.add(w.name);
      if (w.dtype !== 'float32') fail(`${where}: unsupported dtype ${JSON.stringify(w.dtype)}`);
      const n = elementCount(w.shape, where);
      const values = new Float32Array(n);
      const q = w.quantization;
      if (q === undefined || q === null) {
        if (byteOffset + 4 * n > bytes.length) fail(`${where}: runs past the end of the shards`);
        for (let i = 0; i < n; i++) values[i] = bytes.readFloatLE(byteOffset + 4 * i);
        byteOffset += 4 * n;
      } else if (q.dtype === 'uint8' && Number.isFinite(q.min) && Number.isFinite(q.scale) &&
                 Object.keys(q).every((k) => ['dtype', 'min', 'scale'].includes(k))) {
        if (byteOffset + n > bytes.length) fail(`${where}: runs past the end of the shards`);
        // Same arithmetic as tfjs-core's decodeWeights: double, then rounded to float32.
        for (let i = 0; i < n; i++) values[i] = bytes[byteOffset + i] * q.scale + q.min;
        byteOffset += n;
      } else {
        fail(`${where}: unsupported quantization ${JSON.stringify(q)}`);
      }
      manifest.push({ name: w.name, shape: w.shape, offset: floatOffset });
      tensors.push(values);
      floatOffset += n;
    }
  }
  if (byteOffset !== bytes.length) {
    fail(`${modelDir}: the manifest describes ${byteOffset} bytes ` +
         `but the shards hold ${bytes.length}`);
  }

  const out = Buffer.alloc(4 * floatOffset);
  let at = 0;
  for (const t of tensors) {
    for (let i = 0; i < t.length; i++, at += 4) out.writeFloatLE(t[i], at);
  }

  // The converter needs the functional model's layers only; the training configuration and
  // metadata are dropped.
  const topo = model.modelTopology;
  const kept = {};
  for (const key of ['keras_version', 'backend', 'model_config', 'class_name', 'config']) {
    if (key in topo) kept[key] = topo[key];
  }
  const config = (topo.model_config || topo).config;
  if (!config || !Array.isArray(config.layers)) fail(`${modelFile}: topology without layers`);

  fs.mkdirSync(outDir, { recursive: true });
  // Written under temporary names and renamed, so an interrupted run leaves no half folder.
  const weightsTmp = path.join(outDir, 'weights.bin.tmp');
  const modelTmp = path.join(outDir, 'model.json.tmp');
  fs.writeFileSync(weightsTmp, out);
  fs.writeFileSync(modelTmp, JSON.stringify({ modelTopology: kept, weights: manifest }));
  fs.renameSync(weightsTmp, path.join(outDir, 'weights.bin'));
  fs.renameSync(modelTmp, path.join(outDir, 'model.json'));
  console.log(`${outDir}: ${config.layers.length} layers, ${manifest.length} tensors, ` +
              `${floatOffset} floats`);
}

main();
