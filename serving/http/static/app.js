// The page behind "/": list the models, send an image to /v1/models/NAME/versions/V/explain, draw the answer.
// Plain browser JavaScript, no dependencies: the server serves this file and nothing else is fetched.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // {file, image} of the picked image

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: headers(options.headers) });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function loadModels() {
  try {
    const { models = [] } = await call("/v1/models");
    const serving = models.filter((m) => m.state === "SERVING");
    $("model").replaceChildren(...serving.map((m) => {
      const option = document.createElement("option");
      option.value = `${m.name}/versions/${m.version}`;
      option.dataset.stages = m.stages.length ? "1" : "0"; // a version without an explain graph shows no stages
      option.textContent = `${m.name} (version ${m.version}, ${m.input.channels}×${m.input.height}×${m.input.width})`;
      return option;
    }));
    status(serving.length ? "Ready: pick an image." : "No model is serving yet.", !serving.length);
  } catch (e) {
    status(`Cannot list the models: ${e.message}`, true);
  }
}

// A blue → green → yellow → red colour scale for values in [0, 1].
function heat(v) {
  const stops = [[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]];
  const x = Math.min(Math.max(v, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const t = x - i;
  return stops[i].map((c, j) => Math.round(c + t * (stops[i + 1][j] - c)));
}

function drawOverlay(image, heatmap) {
  const canvas = $("overlay");
  const scale = image ? Math.min(320 / image.width, 320 / image.height) : 1;
  canvas.width = image ? Math.round(image.width * scale) : 320;
  canvas.height = image ? Math.round(image.height * scale) : 320;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false; // small inputs (a 16-px digit) stay sharp squares
  if (image) ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const small = document.createElement("canvas");
  small.width = heatmap.width;
  small.height = heatmap.height;
  const pixels = small.getContext("2d").createImageData(heatmap.width, heatmap.height);
  (heatmap.values || []).forEach((v, i) => {
    const [r, g, b] = heat(v);
    pixels.data.set([r, g, b, Math.round(255 * (0.08 + 0.5 * v))], i * 4); // the image shows through
  });
  small.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function drawStages(stages) {
  $("stages").replaceChildren(...stages.map((stage) => {
    const block = document.createElement("div");
    block.className = "stage";
    const title = document.createElement("h3");
    title.textContent = `${stage.name}: the ${stage.channels} most active of ${stage.total_channels} channels, ` +
      `${stage.height}×${stage.width}`;
    block.append(title);
    const bytes = Uint8Array.from(atob(stage.values || ""), (c) => c.charCodeAt(0));
    const zoom = Math.max(1, Math.floor(96 / stage.width));
    for (let c = 0; c < stage.channels; c++) {
      const canvas = document.createElement("canvas");
      canvas.width = stage.width;
      canvas.height = stage.height;
      canvas.style.width = `${stage.width * zoom}px`;
      const pixels = canvas.getContext("2d").createImageData(stage.width, stage.height);
      for (let i = 0; i < stage.width * stage.height; i++) {
        const v = bytes[c * stage.width * stage.height + i];
        pixels.data.set([v, v, v, 255], i * 4);
      }
      canvas.getContext("2d").putImageData(pixels, 0, 0);
      block.append(canvas);
    }
    return block;
  }));
}

function drawPredictions(answer) {
  $("top1").textContent = answer.predictions[0].label;
  $("predictions").replaceChildren(...answer.predictions.map((p) => {
    const item = document.createElement("li");
    item.className = "prediction" + (p.index === answer.class_index ? " chosen" : "");
    item.dataset.index = p.index;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${p.label} ${(100 * (p.probability || 0)).toFixed(1)} %`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * (p.probability || 0))}%`;
    item.append(label, bar);
    item.addEventListener("click", () => explain(p.index));
    return item;
  }));
}

async function explain(classIndex = null) {
  if (!current || !$("model").value) return;
  const query = new URLSearchParams({ stages: $("model").selectedOptions[0].dataset.stages }); // top_k left out: the server's default, 5 or every class when fewer
  if ($("method").value) query.set("method", $("method").value);
  if (classIndex !== null) query.set("class", classIndex);
  status("Asking the model…");
  try {
    const answer = await call(`/v1/models/${$("model").value}/explain?${query}`, {
      method: "POST", body: current.file, headers: { "Content-Type": current.file.type || "application/octet-stream" },
    });
    drawPredictions(answer);
    drawOverlay(current.image, answer.heatmap);
    drawStages(answer.stages || []);
    $("caption").textContent = `Evidence for “${answer.label}” (${answer.method === "cam" ?
      "class activation map" : "occlusion"}, ${answer.heatmap.height}×${answer.heatmap.width})`;
    $("result").hidden = false;
    status(`Done (request ${answer.request_id}).`);
  } catch (e) {
    status(e.message, true);
  }
}

function pick(file) {
  if (!file) return;
  const image = new Image();
  image.onload = () => { current = { file, image }; explain(); };
  image.onerror = () => { current = { file, image: null }; status("The browser cannot show this file; sending it anyway."); explain(); };
  image.src = URL.createObjectURL(file);
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files[0]); });
  $("model").addEventListener("change", () => explain());
  $("method").addEventListener("change", () => explain());
  $("token").addEventListener("change", loadModels);
  loadModels();
});
