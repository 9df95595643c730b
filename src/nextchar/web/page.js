// The page of `nextchar serve`: stream generated text, shade pasted text by surprisal.
// It talks only to this origin's /v1/ API (no network: the page's policy forbids anything else).
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var controller = null;  // the running generation, to stop it
  var VISIBLE = {"\n": "\u21b5", " ": "\u2423", "\t": "\u21e5", "\r": "\u240d"};

  function headers() {
    var h = {"Content-Type": "application/json"};
    if ($("key").value) { h.Authorization = "Bearer " + $("key").value; }
    return h;
  }

  function say(id, text, isError) {
    $(id).textContent = text;
    $(id).classList.toggle("error", !!isError);
  }

  function errorText(status, body) {
    var error = body && body.error;
    if (status === 401) { $("key-box").hidden = false; }
    return error ? (error.field ? error.field + ": " : "") + error.message : "HTTP " + status;
  }

  async function api(path, body) {
    var response = await fetch(path, body === undefined ? {headers: headers()}
      : {method: "POST", headers: headers(), body: JSON.stringify(body)});
    var data = await response.json().catch(function () { return null; });
    if (!response.ok) { throw new Error(errorText(response.status, data)); }
    return data;
  }

  var models = [];
  async function loadModels() {
    try {
      models = (await api("/v1/models")).models;
    } catch (error) {
      say("model-note", error.message + " (enter the API key above)", true);
      return;
    }
    var select = $("model");
    select.textContent = "";
    models.forEach(function (m) {
      var option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.name;
      select.appendChild(option);
    });
    describe();
  }

  function current() {
    return models.find(function (m) { return m.name === $("model").value; }) || models[0];
  }

  function describe() {
    var m = current();
    if (!m) { return; }
    $("model-name").textContent = m.name;
    var best = m.best_val_bits_per_char === null ? "" : ", " + m.best_val_bits_per_char.toFixed(3) + " bits/char on validation";
    say("model-note", m.cell + ", " + m.layers + " x " + m.hidden + " hidden, " + m.vocab_size +
        " symbols, " + m.parameters.toLocaleString() + " parameters" + best + ".");
    $("top-bits").textContent = Math.max(1, Math.log2(m.vocab_size)).toFixed(1);
  }

  // ---- generate: POST /v1/generate with "stream": true, read the server-sent events -------
  async function generate() {
    var out = $("output");
    out.textContent = "";
    var body = {model: $("model").value || null, prime: $("prime").value, stream: true,
                length: Number($("length").value), temperature: Number($("temperature").value),
                top_p: Number($("top-p").value)};
    if ($("seed").value !== "") { body.seed = Number($("seed").value); }
    controller = new AbortController();
    $("generate").disabled = true;
    $("stop").disabled = false;
    say("generate-note", "");
    var started = performance.now(), chars = 0;
    try {
      var response = await fetch("/v1/generate", {method: "POST", headers: headers(),
                                                  body: JSON.stringify(body), signal: controller.signal});
      if (!response.ok) {
        throw new Error(errorText(response.status, await response.json().catch(function () { return null; })));
      }
      var reader = response.body.getReader(), decoder = new TextDecoder(), pending = "";
      var text = document.createTextNode("");
      for (;;) {
        var part = await reader.read();
        if (part.done) { break; }
        pending += decoder.decode(part.value, {stream: true});
        var cut;
        while ((cut = pending.indexOf("\n\n")) >= 0) {
          var event = parse(pending.slice(0, cut));
          pending = pending.slice(cut + 2);
          if (event.name === "start") {
            var prime = document.createElement("span");
            prime.className = "prime";
            prime.textContent = event.data.prime;
            out.appendChild(prime);
            out.appendChild(text);
            say("generate-note", "seed " + event.data.seed);
          } else if (event.name === "text") {
            text.appendData(event.data.text);
            chars += event.data.text.length;
            out.scrollTop = out.scrollHeight;
          } else if (event.name === "done") {
            var seconds = (performance.now() - started) / 1000;
            say("generate-note", $("generate-note").textContent + ": " + chars + " characters in " +
                seconds.toFixed(2) + " s");
          } else if (event.name === "error") {
            throw new Error(errorText(0, event.data));
          }
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") { say("generate-note", error.message, true); }
    } finally {
      controller = null;
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  }

  function parse(block) {
    var event = {name: "message", data: null}, lines = block.split("\n");
    for (var i = 0; i < lines.length; i++) {
      if (lines[i].indexOf("event: ") === 0) { event.name = lines[i].slice(7); }
      if (lines[i].indexOf("data: ") === 0) { event.data = JSON.parse(lines[i].slice(6)); }
    }
    return event;
  }

  // ---- surprisal: POST /v1/score, one shaded span per character, as in the report --------
  // as the report (report/page.py): controls, format characters (bidi, zero-width), separators,
  // surrogates, private-use and unassigned code points would show nothing, or move their
  // neighbours, so they show as their code point
  var INVISIBLE = /^[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Co}\p{Cn}]$/u;

  function invisible(c) { return !VISIBLE[c] && INVISIBLE.test(c); }

  function shown(c) {
    if (VISIBLE[c]) { return VISIBLE[c]; }
    var code = c.codePointAt(0);
    if (code < 32) { return String.fromCodePoint(0x2400 + code); }
    if (code === 127) { return "\u2421"; }
    return invisible(c) ? "U+" + code.toString(16).toUpperCase().padStart(4, "0") : c;
  }

  async function score() {
    var passage = $("surprisal");
    passage.textContent = "";
    say("score-note", "scoring...");
    var result;
    try {
      result = await api("/v1/score", {model: $("model").value || null, text: $("score-text").value});
    } catch (error) {
      say("score-note", error.message, true);
      return;
    }
    var topBits = Math.max(1, Math.log2(current().vocab_size));
    var fragment = document.createDocumentFragment();
    result.characters.forEach(function (ch) {
      var span = document.createElement("span");
      span.className = "ch" + (ch.char === "\n" ? " nl" : (invisible(ch.char) ? " ctl" : ""));
      span.textContent = (ch.char === " " || ch.char === "\t") ? ch.char : shown(ch.char);
      if (!ch.known) {
        span.className += " unk";
        span.title = shown(ch.char) + " is not in the model's vocabulary: not scored";
      } else if (ch.bits === null) {
        span.className += " first";
        span.title = "the first character: nothing before it to predict it from";
      } else {
        // the report's shading: bits / log2(V), at most 0.85 opaque
        var alpha = Math.min(1, ch.bits / topBits) * 0.85;
        span.style.background = "rgba(230,85,13," + alpha.toFixed(3) + ")";
        span.dataset.bits = ch.bits;
        span.title = shown(ch.char) + ": " + ch.bits.toFixed(2) + " bits\nexpected: " +
          ch.top.map(function (g) { return shown(g[0]) + " " + (100 * g[1]).toFixed(1) + "%"; }).join(" \u00b7 ");
      }
      fragment.appendChild(span);
      if (ch.char === "\n") { fragment.appendChild(document.createElement("br")); }
    });
    passage.appendChild(fragment);
    say("score-note", result.bits_per_char.toFixed(3) + " bits/char over " + result.chars +
        " scored characters (perplexity " + result.perplexity.toFixed(2) + ")" +
        (result.unknown_chars ? "; " + result.unknown_chars + " outside the vocabulary, not scored" : ""));
  }

  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", function () { if (controller) { controller.abort(); } });
  $("score").addEventListener("click", score);
  $("score-text").addEventListener("paste", function () { setTimeout(score, 0); });
  $("model").addEventListener("change", describe);
  $("key").addEventListener("change", loadModels);
  loadModels();
})();
