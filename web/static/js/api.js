// Calls a service's API on this origin. Always resolves: {ok, status, data, error}, where error
// is the services' {code, message, fields} (or "network" when the request never arrived).
export async function api(path, { method = "GET", body, query } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const init = { method, cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    return { ok: false, status: 0, data: null, error: { code: "network", message: "", fields: {} } };
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // an empty or non-JSON answer (a proxy's error page)
  }
  if (response.ok) return { ok: true, status: response.status, data, error: null };
  const error = (data && data.error) || { code: `http_${response.status}`, message: "", fields: {} };
  return { ok: false, status: response.status, data, error: { fields: {}, ...error } };
}
