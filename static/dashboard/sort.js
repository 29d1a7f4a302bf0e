/* Sortable quote columns: click (or Enter on) a header; click again to reverse.
   The order holds across live updates. */
(function () {
  "use strict";
  const table = document.getElementById("quotes");
  if (!table) return;
  const headers = [...table.tHead.querySelectorAll("th[data-sort]")];
  let current = { field: "symbol", dir: 1 };

  function key(tr, field, numeric) {
    const cell = tr.querySelector(`[data-field="${field}"]`);
    const raw = cell ? cell.dataset.value : "";
    if (!numeric) return raw;
    return raw === "" ? null : Number(raw);
  }

  function sort() {
    const th = headers.find((h) => h.dataset.sort === current.field);
    const numeric = !th || th.dataset.type !== "text";
    const tbody = table.tBodies[0];
    const rows = [...tbody.querySelectorAll("tr[data-symbol]")];
    rows.sort((a, b) => {
      const ka = key(a, current.field, numeric), kb = key(b, current.field, numeric);
      if (ka === null || kb === null) return (ka === null) - (kb === null); // unknown values last
      const order = numeric ? ka - kb : ka.localeCompare(kb);
      return order * current.dir || a.dataset.symbol.localeCompare(b.dataset.symbol);
    });
    if (rows.some((tr, i) => tbody.rows[i] !== tr)) rows.forEach((tr) => tbody.appendChild(tr));
  }

  function choose(th) {
    const field = th.dataset.sort;
    // Text ascending first; numbers largest first, as traders read them.
    const first = th.dataset.type === "text" ? 1 : -1;
    current = { field, dir: current.field === field ? -current.dir : first };
    headers.forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", current.dir > 0 ? "ascending" : "descending");
    sort();
  }

  headers.forEach((th) => {
    th.tabIndex = 0;
    th.addEventListener("click", () => choose(th));
    th.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); choose(th); } });
  });
  document.addEventListener("stk:rows-updated", sort);
})();
