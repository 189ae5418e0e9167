/* latentbook latent explorer: a 2-D decoder run in the reader's browser, no kernel needed.
 *
 * Each <div class="lb-explorer"> written by latentbook.explorer.static_explorer carries
 *   data-src   the URL of the weights file (float16, little-endian),
 *   data-meta  JSON: layer sizes and activations, the number of codes, the file's SHA-256, plot limits.
 * The file holds, in order: for each layer its weight [out, in] (row-major) and bias [out], then the
 * codes [n, 2] and their labels (uint8). Clicking or dragging on the plane decodes that point.
 * From the keyboard: the plane takes focus (Tab), the arrow keys move the point by 1/80 of the plane's
 * width (Shift: 1/16), Home goes back to the start. The coordinates, and the class of the nearest drawn
 * code, are announced in a polite live region (.lb-z), so a screen reader says where the point is.
 * After each decode the div's data-z holds "z1,z2" (read by the browser tests).
 */
(function () {
  "use strict";
  if (window.lbExplorerInit) { window.lbExplorerInit(); return; }

  // matplotlib's tab10, the colours of lb.plots.latent_scatter
  var COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function halfToFloat(h) {  // IEEE 754 binary16 -> number
    var s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * Math.pow(2, e - 15) * (1 + f / 1024);
  }

  function hex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer),
      function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function unpack(buffer, meta) {
    var bytes = new DataView(buffer), pos = 0;
    function take(n) {
      var out = new Float32Array(n);
      for (var i = 0; i < n; i++, pos += 2) out[i] = halfToFloat(bytes.getUint16(pos, true));
      return out;
    }
    var layers = meta.layers.map(function (l) {
      return { n_in: l.in, n_out: l.out, act: l.act, w: take(l.out * l.in), b: take(l.out) };
    });
    var codes = take(2 * meta.n_codes);
    var labels = new Uint8Array(buffer, pos, meta.n_codes);
    if (pos + meta.n_codes !== buffer.byteLength) throw new Error("the weights file has an unexpected size");
    return { layers: layers, codes: codes, labels: labels };
  }

  function decode(layers, z) {  // the decoder's mean image: Float32Array of 784 values in [0, 1]
    var h = Float32Array.from(z);
    layers.forEach(function (l) {
      var y = new Float32Array(l.n_out);
      for (var o = 0; o < l.n_out; o++) {
        var s = l.b[o], row = o * l.n_in;
        for (var i = 0; i < l.n_in; i++) s += l.w[row + i] * h[i];
        if (l.act === "relu") s = s > 0 ? s : 0;
        else if (l.act === "sigmoid") s = 1 / (1 + Math.exp(-s));
        y[o] = s;
      }
      h = y;
    });
    return h;
  }

  function setUp(root) {
    root.dataset.ready = "loading";
    var meta = JSON.parse(root.dataset.meta);
    var lim = meta.lim, size = 300;
    var id = root.id || "lb-explorer";
    root.innerHTML =
      '<div style="display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start">' +
      '<canvas class="lb-plane" tabindex="0" role="application" aria-roledescription="latent plane" ' +
      'aria-label="Plane of two-dimensional codes, z1 to the right and z2 upward, from ' + lim[0] +
      ' to ' + lim[1] + ': click, drag, or use the arrow keys (Shift for bigger steps, Home to go back) ' +
      'to move the point the decoder draws" aria-describedby="' + id + '-z" ' +
      'style="width:' + size + 'px;height:' + size + 'px;max-width:100%;cursor:crosshair;' +
      'border:1px solid #767676;touch-action:none"></canvas>' +
      '<div><canvas class="lb-digit" width="28" height="28" role="img" ' +
      'aria-label="The image the decoder makes of the chosen point" style="width:168px;height:168px;' +
      'image-rendering:pixelated;border:1px solid #767676;background:#000"></canvas>' +
      '<div class="lb-z" id="' + id + '-z" role="status" aria-live="polite" aria-atomic="true" ' +
      'style="font-family:monospace;margin-top:6px;max-width:200px"></div>' +
      '<div class="lb-legend" style="font-size:12px;margin-top:6px;max-width:180px"></div></div></div>' +
      '<div class="lb-status" style="font-size:13px;color:#595959;margin-top:4px">loading the decoder\u2026</div>';
    var plane = root.querySelector(".lb-plane"), digit = root.querySelector(".lb-digit");
    var status = root.querySelector(".lb-status"), zText = root.querySelector(".lb-z");
    var ratio = window.devicePixelRatio || 1;
    plane.width = size * ratio; plane.height = size * ratio;
    root.querySelector(".lb-legend").innerHTML = (meta.classes || []).map(function (c, k) {
      return '<span style="white-space:nowrap;margin-right:6px"><span style="color:' + COLOURS[k % 10] +
        '">\u25cf</span> ' + c + "</span>";
    }).join(" ");

    function toPixel(v, axis) {  // code -> canvas pixel (y grows downward)
      var t = (v - lim[0]) / (lim[1] - lim[0]);
      return (axis === 0 ? t : 1 - t) * size * ratio;
    }

    fetch(root.dataset.src).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.arrayBuffer();
    }).then(function (buffer) {
      var check = (window.crypto && window.crypto.subtle)
        ? window.crypto.subtle.digest("SHA-256", buffer).then(function (d) {
            if (hex(d) !== meta.sha256) throw new Error("the weights file does not match its checksum");
          })
        : Promise.resolve();  // no SubtleCrypto (a page served over plain http): the size check remains
      return check.then(function () { return unpack(buffer, meta); });
    }).then(function (net) {
      var background = document.createElement("canvas");
      background.width = plane.width; background.height = plane.height;
      var bg = background.getContext("2d");
      bg.fillStyle = "#fff"; bg.fillRect(0, 0, background.width, background.height);
      bg.strokeStyle = "#ddd"; bg.lineWidth = ratio;
      for (var g = Math.ceil(lim[0]); g <= lim[1]; g++) {  // grid lines at the integers
        bg.beginPath(); bg.moveTo(toPixel(g, 0), 0); bg.lineTo(toPixel(g, 0), background.height); bg.stroke();
        bg.beginPath(); bg.moveTo(0, toPixel(g, 1)); bg.lineTo(background.width, toPixel(g, 1)); bg.stroke();
      }
      bg.fillStyle = "#888"; bg.font = (10 * ratio) + "px sans-serif";
      for (var t = Math.ceil(lim[0]) + 1; t < lim[1]; t++) {  // axis labels inside the edges: z1 below, z2 left
        bg.fillText(String(t), toPixel(t, 0) + 2 * ratio, background.height - 3 * ratio);
        if (t !== 0) bg.fillText(String(t), 3 * ratio, toPixel(t, 1) - 2 * ratio);
      }
      bg.fillText("z\u2081 \u2192", background.width - 30 * ratio, background.height - 14 * ratio);
      bg.fillText("z\u2082 \u2191", 3 * ratio, 12 * ratio);
      bg.globalAlpha = 0.6;
      for (var i = 0; i < meta.n_codes; i++) {
        bg.fillStyle = COLOURS[net.labels[i] % 10];
        bg.fillRect(toPixel(net.codes[2 * i], 0) - ratio, toPixel(net.codes[2 * i + 1], 1) - ratio,
                    2 * ratio, 2 * ratio);
      }
      var ctx = plane.getContext("2d"), dctx = digit.getContext("2d");
      var current = (meta.start || [0, 0]).slice();

      function nearestClass(z) {  // the class of the drawn code nearest to z: what the reader sees there
        var best = -1, bestD = Infinity;
        for (var i = 0; i < meta.n_codes; i++) {
          var dx = net.codes[2 * i] - z[0], dy = net.codes[2 * i + 1] - z[1], d = dx * dx + dy * dy;
          if (d < bestD) { bestD = d; best = i; }
        }
        if (best < 0 || !(meta.classes || []).length) return "";
        return "; nearest code: " + meta.classes[net.labels[best]];
      }

      function show(z) {
        z = [Math.min(lim[1], Math.max(lim[0], z[0])), Math.min(lim[1], Math.max(lim[0], z[1]))];
        current = z;
        var img = decode(net.layers, z), data = dctx.createImageData(28, 28);
        for (var p = 0; p < 784; p++) {
          var v = Math.round(255 * Math.min(1, Math.max(0, img[p])));
          data.data[4 * p] = data.data[4 * p + 1] = data.data[4 * p + 2] = v;
          data.data[4 * p + 3] = 255;
        }
        dctx.putImageData(data, 0, 0);
        ctx.drawImage(background, 0, 0);
        var px = toPixel(z[0], 0), py = toPixel(z[1], 1), r = 7 * ratio;
        ctx.strokeStyle = "#000"; ctx.lineWidth = 2.5 * ratio;
        ctx.beginPath(); ctx.moveTo(px - r, py - r); ctx.lineTo(px + r, py + r);
        ctx.moveTo(px - r, py + r); ctx.lineTo(px + r, py - r); ctx.stroke();
        zText.textContent = "z = (" + z[0].toFixed(2) + ", " + z[1].toFixed(2) + ")" + nearestClass(z);
        root.dataset.z = z[0] + "," + z[1];
      }

      function fromEvent(ev) {
        var box = plane.getBoundingClientRect();
        var tx = (ev.clientX - box.left) / box.width, ty = (ev.clientY - box.top) / box.height;
        return [lim[0] + tx * (lim[1] - lim[0]), lim[1] - ty * (lim[1] - lim[0])];
      }
      var dragging = false;
      plane.addEventListener("pointerdown", function (ev) {
        dragging = true; plane.setPointerCapture(ev.pointerId); show(fromEvent(ev));
      });
      plane.addEventListener("pointermove", function (ev) { if (dragging) show(fromEvent(ev)); });
      plane.addEventListener("pointerup", function () { dragging = false; });
      var MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
      plane.addEventListener("keydown", function (ev) {
        if (ev.key === "Home") { show(meta.start || [0, 0]); ev.preventDefault(); return; }
        var m = MOVES[ev.key];
        if (!m || ev.altKey || ev.ctrlKey || ev.metaKey) return;
        var step = (lim[1] - lim[0]) / (ev.shiftKey ? 16 : 80);  // 0.1 and 0.5 on [-4, 4]
        show([current[0] + m[0] * step, current[1] + m[1] * step]);
        ev.preventDefault();  // the arrows move the point, not the page
      });
      show(meta.start || [0, 0]);
      status.textContent = "Click or drag on the plane, or focus it and use the arrow keys: " +
        "the decoder runs in your browser.";
      root.dataset.ready = "yes";
    }).catch(function (err) {
      status.textContent = "The in-browser explorer could not start (" + err.message + "). " +
        "It runs on the book's website; in a notebook, use the live explorer.";
      root.dataset.ready = "failed";
    });
  }

  window.lbExplorerInit = function () {
    document.querySelectorAll("div.lb-explorer").forEach(function (root) {
      if (!root.dataset.ready) setUp(root);
    });
  };
  window.lbExplorerInit();
})();
