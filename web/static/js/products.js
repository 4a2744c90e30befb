import { api } from "./api.js";
import { el, replaceChildren } from "./dom.js";
import { errorText, money, stockState } from "./format.js";
import { t } from "./i18n.js";

const PER_PAGE = 20;

function card(product) {
  const stock = stockState(product);
  return el("li", { class: "card" },
    el("a", { class: "card-link", href: `/product/${encodeURIComponent(product.id)}` },
      el("h2", { class: "card-title", text: product.title }),
      el("p", { class: "price", text: money(product.price_cents, product.currency) }),
      el("p", { class: `stock stock-${stock.state}`, text: stock.text })));
}

// A product list that pages with a "more" button: GET /catalog/v1/products with `filters`
// (merchant_id, q). Redrawing keeps the pages already loaded.
export function productList(listNode, statusNode, moreButton) {
  let products = [];
  let page = 0;
  let total = 0;
  let filters = {};

  function draw() {
    replaceChildren(listNode, products.map(card));
    moreButton.hidden = products.length >= total;
    moreButton.textContent = t("list.more");
    if (!products.length) statusNode.textContent = t(filters.q ? "list.no_match" : "list.empty");
    else statusNode.textContent = t("list.count", { n: total });
  }

  async function fetchPage(next) {
    statusNode.textContent = t("list.loading");
    let answer = await api("/catalog/v1/products", { query: { ...filters, page: next, per_page: PER_PAGE } });
    if (!answer.ok && filters.q && answer.error.fields?.q) {
      // A catalog without search yet refuses q: show everything rather than nothing.
      const { q, ...rest } = filters;
      filters = rest;
      answer = await api("/catalog/v1/products", { query: { ...filters, page: next, per_page: PER_PAGE } });
    }
    if (!answer.ok) {
      statusNode.textContent = errorText(answer.error);
      return false;
    }
    products = next === 1 ? answer.data.items : products.concat(answer.data.items);
    page = next;
    total = answer.data.total;
    draw();
    return true;
  }

  moreButton.addEventListener("click", () => fetchPage(page + 1));
  return {
    load(newFilters) {
      filters = newFilters;
      return fetchPage(1);
    },
    draw,
  };
}
