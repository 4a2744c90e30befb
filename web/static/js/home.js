import { $ } from "./dom.js";
import { startPage } from "./page.js";
import { productList } from "./products.js";

const list = productList($("#products"), $("#list-status"), $("#more"));
const search = $("#search");
let loaded = false;

search.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = $("#q").value.trim();
  history.replaceState(null, "", q ? `/?q=${encodeURIComponent(q)}` : "/");
  list.load(q ? { q } : {});
});

startPage(async () => {
  if (loaded) return list.draw(); // a language switch: same products, new words
  loaded = true;
  const q = new URLSearchParams(location.search).get("q") || "";
  $("#q").value = q;
  await list.load(q ? { q } : {});
});
