// textmef serve: pick photos, send them to /api/fuse, show the result with a before/after
// comparison. Plain JavaScript, no libraries: the page must work offline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const config = document.body.dataset;
  const maxFiles = Number(config.maxFiles);
  const maxBytes = Number(config.maxUploadBytes);
  const suffixes = config.suffixes.split(",");
  // Browsers cannot show TIFF, so those get a placeholder until the server's previews come.
  const showable = new Set([".png", ".jpg", ".jpeg"]);
  // A busy server (503) is asked once more after its Retry-After, if that is this soon.
  const maxAutoRetrySeconds = 120;

  const el = {
    files: $("files"), dropzone: $("dropzone"), thumbs: $("thumbs"), note: $("thumbs-note"),
    method: $("method"), align: $("align"), fuse: $("fuse"), clear: $("clear"),
    busy: $("busy"), error: $("error"), placeholder: $("placeholder"), result: $("result"),
    stage: $("stage"), fused: $("fused-img"), input: $("input-img"), tagRight: $("tag-right"),
    meta: $("meta"), compare: $("compare"), compareWith: $("compare-with"),
    download: $("download"),
  };

  let files = [];
  let objectUrls = [];
  let busy = false;
  let currentResult = null;

  const megabytes = (bytes) => `${(bytes / 1048576).toFixed(1)} MB`;
  const suffixOf = (name) => {
    const dot = name.lastIndexOf(".");
    return dot > 0 ? name.slice(dot).toLowerCase() : "";
  };

  function showError(message) {
    el.error.textContent = message || "";
    el.error.hidden = !message;
  }

  // The server checks all of this too; checking first names the file without an upload.
  function problemWith(list) {
    if (list.length < 2) {
      return list.length
        ? `Fusion needs at least 2 photos of one scene; only ${list[0].name} so far.`
        : "Add at least 2 photos of one scene.";
    }
    if (list.length > maxFiles) {
      const extra = list.slice(maxFiles).map((f) => f.name);
      return `${list.length} photos chosen but at most ${maxFiles} can be fused at once; ` +
        `leave out ${extra.length}, e.g. ${extra.slice(0, 3).join(", ")}.`;
    }
    for (const f of list) {
      const suffix = suffixOf(f.name);
      if (!suffixes.includes(suffix)) {
        return `${f.name}: unsupported file type (${suffix || "no suffix"}); ` +
          `use one of ${suffixes.join(", ")}.`;
      }
      if (f.size === 0) return `${f.name}: is empty (0 bytes).`;
    }
    const total = list.reduce((sum, f) => sum + f.size, 0);
    if (total > maxBytes) return tooLarge(list, total);
    return null;
  }

  function tooLarge(list, total) {
    const largest = list.reduce((a, b) => (b.size > a.size ? b : a));
    return `The photos add up to ${megabytes(total)}, over this server's limit of ` +
      `${megabytes(maxBytes)}; the largest is ${largest.name} (${megabytes(largest.size)}).`;
  }

  function renderThumbs(items) {
    el.thumbs.replaceChildren(...items.map((item) => {
      const li = document.createElement("li");
      li.className = "thumb" + (item.dim ? " dim" : "");
      if (item.src) {
        const img = document.createElement("img");
        img.src = item.src;
        img.alt = item.name;
        li.append(img);
      } else {
        const box = document.createElement("div");
        box.className = "noimg";
        box.textContent = suffixOf(item.name).slice(1).toUpperCase() || "?";
        li.append(box);
      }
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = item.name;
      name.title = item.name;
      const caption = document.createElement("span");
      caption.className = "caption";
      caption.textContent = item.caption;
      li.append(name, caption);
      return li;
    }));
  }

  function forgetObjectUrls() {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
  }

  function setFiles(list) {
    files = Array.from(list);
    forgetObjectUrls();
    hideResult();
    renderThumbs(files.map((f) => {
      let src = null;
      if (showable.has(suffixOf(f.name))) {
        src = URL.createObjectURL(f);
        objectUrls.push(src);
      }
      return { name: f.name, src, caption: megabytes(f.size) };
    }));
    el.note.hidden = files.length < 2;
    el.note.textContent = "In the order chosen; after fusing, darkest to brightest.";
    el.fuse.disabled = busy || files.length < 2;
    el.clear.disabled = busy || files.length === 0;
    showError(files.length ? problemWith(files) : "");
  }

  function setBusy(on, text) {
    busy = on;
    el.busy.textContent = on ? text : "";
    el.busy.classList.toggle("on", on);
    el.fuse.disabled = on || files.length < 2;
    el.clear.disabled = on || files.length === 0;
    el.dropzone.classList.toggle("disabled", on);
    document.body.setAttribute("aria-busy", on ? "true" : "false");
  }

  // One POST of the form: the response and its JSON (null when the body is not JSON).
  async function send(form) {
    let response;
    try {
      response = await fetch("api/fuse", { method: "POST", body: form });
    } catch (err) {
      throw new Error("Could not reach the textmef server; is it still running?");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null; // waitress answers some refusals (e.g. huge uploads) in plain text
    }
    return { response, data };
  }

  // Retry-After in whole seconds (at least 1), or null when the server gave none.
  function retryAfter(response) {
    const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(seconds) ? Math.max(1, seconds) : null;
  }

  function busyMessage(data, seconds) {
    if (data && data.error) return data.error;
    return "The server is busy" + (seconds ? `; try again in ${seconds} s.` : "; try again soon.");
  }

  // Wait `seconds`, counting down in the status line.
  async function countdown(seconds) {
    for (let left = seconds; left > 0; left -= 1) {
      el.busy.textContent = `The server is busy; trying again in ${left} s…`;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function fuse() {
    const problem = problemWith(files);
    if (problem) {
      showError(problem);
      return;
    }
    showError("");
    const fusing = `Fusing ${files.length} photos…`;
    setBusy(true, fusing);
    try {
      const form = new FormData();
      files.forEach((f) => form.append("files", f, f.name));
      form.append("method", el.method.value);
      form.append("align", el.align.checked ? "1" : "0");
      let { response, data } = await send(form);
      if (response.status === 503) {
        const seconds = retryAfter(response);
        if (seconds === null || seconds > maxAutoRetrySeconds) {
          throw new Error(busyMessage(data, seconds));
        }
        // The server's own message stays up while the page waits, then it asks once more.
        showError(busyMessage(data, seconds));
        await countdown(seconds);
        showError("");
        el.busy.textContent = fusing;
        ({ response, data } = await send(form));
        if (response.status === 503) throw new Error(busyMessage(data, retryAfter(response)));
      }
      if (!response.ok) {
        if (data && data.error) throw new Error(data.error);
        if (response.status === 413) {
          throw new Error(tooLarge(files, files.reduce((s, f) => s + f.size, 0)));
        }
        throw new Error(`The server answered ${response.status} ${response.statusText}.`);
      }
      showResult(data);
    } catch (err) {
      showError(err.message || String(err));
    } finally {
      setBusy(false, "");
    }
  }

  function rankLabel(rank, count) {
    if (rank === 0) return "darkest";
    if (rank === count - 1) return "brightest";
    return `exposure ${rank + 1} of ${count}`;
  }

  function showResult(data) {
    const count = data.order.length;
    const used = new Set(data.used);
    forgetObjectUrls();
    renderThumbs(data.order.map((index, rank) => {
      const input = data.inputs[index];
      let caption = rankLabel(rank, count);
      if (!used.has(index)) caption += " · not used";
      if (data.motions && data.motions[index]) caption += ` · ${data.motions[index]}`;
      return { name: input.name, src: input.preview_url, caption, dim: !used.has(index) };
    }));
    el.note.hidden = false;
    el.note.textContent = "Darkest to brightest (by " +
      (data.ordering === "exif" ? "EXIF exposure time" : "brightness") + ").";

    el.compareWith.replaceChildren(...data.order.map((index, rank) => {
      const option = document.createElement("option");
      option.value = String(index);
      option.textContent = `${data.inputs[index].name} (${rankLabel(rank, count)})`;
      return option;
    }));
    // The middle exposure is the closest thing to "the photo you would have taken".
    el.compareWith.value = String(data.order[Math.floor((count - 1) / 2)]);

    el.stage.style.setProperty("--ratio", String(data.width / data.height));
    el.fused.src = data.preview_url;
    el.fused.alt = `Fused result, ${data.width}×${data.height}`;
    el.fused.dataset.result = data.id;
    chooseInput(data);
    setPosition(50);

    const compute = data.compute_seconds ?? data.seconds;
    const parts = [`${data.width}×${data.height}`, `${data.bit_depth}-bit PNG`,
      data.strategy ? `${data.method} (${data.strategy})` : data.method, `${count} photos`,
      `${compute.toFixed(2)} s`];
    if (data.align) parts.splice(3, 0, "aligned");
    // Time spent waiting for other fusions is shown apart from the fusion's own.
    if (data.queue_seconds > 0.1) parts.push(`${data.queue_seconds.toFixed(1)} s in the queue`);
    // Big photos take the guided path: say so, in the words of the API's one line.
    if (data.resolution && !data.resolution.endsWith("at full resolution")) parts.push(data.resolution);
    el.meta.textContent = parts.join(" · ");
    el.download.href = data.download_url;
    el.download.setAttribute("download", data.filename);
    el.download.textContent = `Download ${data.filename} (${data.bit_depth}-bit PNG)`;
    el.placeholder.hidden = true;
    el.result.hidden = false;
    el.result.dataset.result = data.id;
    currentResult = data;
  }

  function chooseInput(data) {
    const input = data.inputs[Number(el.compareWith.value)];
    el.input.src = input.preview_url;
    el.input.alt = `Input ${input.name}`;
    el.tagRight.textContent = input.name;
  }

  function hideResult() {
    currentResult = null;
    el.result.hidden = true;
    el.placeholder.hidden = false;
    delete el.result.dataset.result;
  }

  function setPosition(percent) {
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    el.stage.style.setProperty("--pos", `${value}%`);
    el.compare.value = String(value);
    el.compare.setAttribute("aria-valuetext", `${value}% fused, ${100 - value}% input`);
  }

  // Drag anywhere on the image: pointer capture keeps the drag alive outside the image.
  let dragging = false;
  const positionFrom = (event) => {
    const box = el.stage.getBoundingClientRect();
    setPosition(((event.clientX - box.left) / box.width) * 100);
  };
  el.stage.addEventListener("pointerdown", (event) => {
    dragging = true;
    el.stage.setPointerCapture(event.pointerId);
    positionFrom(event);
  });
  el.stage.addEventListener("pointermove", (event) => {
    if (dragging) positionFrom(event);
  });
  const endDrag = () => { dragging = false; };
  el.stage.addEventListener("pointerup", endDrag);
  el.stage.addEventListener("pointercancel", endDrag);

  el.compare.addEventListener("input", () => setPosition(Number(el.compare.value)));
  el.compareWith.addEventListener("change", () => {
    if (currentResult) chooseInput(currentResult);
  });

  el.files.addEventListener("change", () => {
    setFiles(el.files.files);
    el.files.value = ""; // the File objects are kept; this lets the same file be re-picked
  });
  el.fuse.addEventListener("click", fuse);
  el.clear.addEventListener("click", () => setFiles([]));

  // Drops anywhere on the page count, so a near miss does not open the image instead.
  let dragDepth = 0;
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    el.dropzone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.dropzone.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    if (!busy && event.dataTransfer && event.dataTransfer.files.length) {
      setFiles(event.dataTransfer.files);
    }
  });

  setPosition(50);
})();
