import { api } from "./api.js";
import { t } from "./i18n.js";

// What the buyer can pay with: one choice per provider, except that a provider whose pay types
// are different wallets (epay: alipay, wxpay) offers one choice each. Pay types that are only
// the same wallet on another screen (Alipay: wap on a phone, page on a computer) are picked
// here by the screen, not asked.
const SCREEN_VARIANTS = { phone: ["wap", "h5", "mweb"], computer: ["page", "qr", "native"] };
const WALLETS = ["alipay", "wxpay", "qqpay"];

export function isPhone() {
  return window.matchMedia("(max-width: 760px), (pointer: coarse)").matches;
}

export function paymentChoices(providers, phone = isPhone()) {
  const choices = [];
  for (const { name, pay_types: payTypes = [] } of providers) {
    const wallets = payTypes.filter((type) => WALLETS.includes(type));
    if (wallets.length > 1) {
      for (const type of wallets) choices.push({ provider: name, pay_type: type });
      continue;
    }
    const preferred = phone ? SCREEN_VARIANTS.phone : SCREEN_VARIANTS.computer;
    const fit = payTypes.find((type) => preferred.includes(type));
    choices.push({ provider: name, pay_type: fit && payTypes.length > 1 ? fit : null });
  }
  return choices;
}

export function choiceLabel(choice) {
  const provider = t(`provider.${choice.provider}`);
  const name = provider === `provider.${choice.provider}` ? choice.provider : provider;
  if (!choice.pay_type || !WALLETS.includes(choice.pay_type)) return name;
  return `${name} · ${t(`pay_type.${choice.pay_type}`)}`;
}

// The enabled providers; when delivery does not list them (an older delivery), one choice that
// lets delivery pick its default.
export async function loadChoices() {
  const answer = await api("/delivery/v1/payments/providers");
  if (!answer.ok || !Array.isArray(answer.data?.providers)) return [{ provider: null, pay_type: null }];
  return paymentChoices(answer.data.providers);
}

// Between the buy form and the order page: the way back to paying (pay_url or QR content) is in
// no order view, so the tab keeps it while the buyer pays.
const payKey = (orderNo) => `linkshop.pay.${orderNo}`;

export function rememberPayment(order) {
  try {
    sessionStorage.setItem(payKey(order.order_no), JSON.stringify({
      pay_url: order.payment?.pay_url || null, qr_code: order.payment?.qr_code || null,
      amount_cents: order.amount_cents, currency: order.currency,
    }));
  } catch {
    // storage off: the order page shows the status without a way back to paying
  }
}

export function rememberedPayment(orderNo) {
  try {
    return JSON.parse(sessionStorage.getItem(payKey(orderNo)) || "null");
  } catch {
    return null;
  }
}

export function orderPage(orderNo, token) {
  return `/order/${encodeURIComponent(orderNo)}?token=${encodeURIComponent(token)}`;
}
