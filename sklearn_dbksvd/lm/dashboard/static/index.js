// Index of the dashboard: sorts and filters the inline table of latents.
// Reads its data from the page itself (file:// pages cannot fetch files).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("latent-data").textContent);
  var rows = data.rows;
  var PAGE = 200;
  var state = { key: "frequency", desc: true, page: 0 };
  var tbody = document.querySelector("#latents tbody");
  var filter = document.getElementById("filter");
  var minfreq = document.getElementById("minfreq");
  var hidedead = document.getElementById("hidedead");

  function fmt(value) {
    if (value === 0) { return "0"; }
    return Math.abs(value) >= 0.001 ? value.toPrecision(3) : value.toExponential(2);
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function selected() {
    // Token lists show spaces as U+2423: so does the needle.
    var needle = filter.value.toLowerCase().replace(/ /g, "\u2423");
    var least = parseFloat(minfreq.value) || 0;
    var kept = rows.filter(function (row) {
      if (hidedead.checked && row.count === 0) { return false; }
      if (row.frequency < least) { return false; }
      if (!needle) { return true; }
      return (row.top_tokens + "\u0000" + row.promoted).toLowerCase().indexOf(needle) >= 0;
    });
    var key = state.key, sign = state.desc ? -1 : 1;
    kept.sort(function (a, b) {
      var x = a[key], y = b[key];
      if (x < y) { return -sign; }
      if (x > y) { return sign; }
      return a.order - b.order;
    });
    return kept;
  }

  // The view lives in the URL's fragment (#filter=...&minfreq=...&sort=...),
  // so that a link or a bookmark reopens it.
  function readFragment() {
    var params = new URLSearchParams(window.location.hash.slice(1));
    if (params.has("filter")) { filter.value = params.get("filter"); }
    if (params.has("minfreq")) { minfreq.value = params.get("minfreq"); }
    if (params.has("hidedead")) { hidedead.checked = params.get("hidedead") === "1"; }
    var sort = params.get("sort");
    if (sort) {
      var desc = sort.charAt(0) === "-";
      var key = desc ? sort.slice(1) : sort;
      if (rows.length === 0 || key in rows[0]) { state.key = key; state.desc = desc; }
    }
  }

  function writeFragment() {
    var params = new URLSearchParams();
    if (filter.value) { params.set("filter", filter.value); }
    if (parseFloat(minfreq.value)) { params.set("minfreq", minfreq.value); }
    if (hidedead.checked) { params.set("hidedead", "1"); }
    params.set("sort", (state.desc ? "-" : "") + state.key);
    window.location.replace("#" + params.toString());
  }

  function render() {
    var kept = selected();
    var pages = Math.max(1, Math.ceil(kept.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var fragment = document.createDocumentFragment();
    kept.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (row) {
      var tr = document.createElement("tr");
      if (row.count === 0) { tr.className = "dead"; }
      var link = document.createElement("a");
      link.href = row.page;
      link.textContent = row.label;
      cell(tr, "", "num").appendChild(link);
      cell(tr, fmt(row.frequency), "num");
      cell(tr, fmt(row.mean), "num");
      cell(tr, fmt(row.max_cos), "num");
      cell(tr, row.top_tokens, "tok");
      if (data.has_effects) { cell(tr, row.promoted, "tok"); }
      fragment.appendChild(tr);
    });
    tbody.replaceChildren(fragment);
    document.getElementById("shown").textContent =
      kept.length + " of " + rows.length + " latents";
    document.getElementById("page").textContent = "page " + (state.page + 1) + " of " + pages;
    document.querySelectorAll("#latents th").forEach(function (th) {
      th.classList.remove("asc", "desc");
      if (th.dataset.key === state.key) { th.classList.add(state.desc ? "desc" : "asc"); }
    });
    document.body.dataset.rendered = String(kept.length);
  }

  document.querySelectorAll("#latents th").forEach(function (th) {
    th.addEventListener("click", function () {
      if (state.key === th.dataset.key) { state.desc = !state.desc; }
      else { state.key = th.dataset.key; state.desc = th.dataset.key !== "order" && th.dataset.key !== "top_tokens"; }
      state.page = 0;
      render();
      writeFragment();
    });
  });
  [filter, minfreq, hidedead].forEach(function (input) {
    input.addEventListener("input", function () {
      state.page = 0;
      render();
      writeFragment();
    });
  });
  document.getElementById("prev").addEventListener("click", function () {
    state.page = Math.max(0, state.page - 1); render();
  });
  document.getElementById("next").addEventListener("click", function () {
    state.page += 1; render();
  });
  readFragment();
  render();
}());
