// Dashboard of throttle-central. Once a second it sends GET requests to the
// API of the central that served this page, and only to it, then redraws
// the cluster panel and the charts of the chosen service and user. The page
// builds every element with DOM methods and textContent, never from HTML
// strings, because names come from edge nodes and operators.
//
// A central started with --token-file responds to the API requests with
// 401 until the page sends a read or admin token. The token entered in the header is kept
// in this tab's sessionStorage and sent as "Authorization: Bearer <token>",
// to this central only.
import {el, formatAmount, formatOptional, lineChart, slotLabel} from './chart.js';

const POLL_INTERVAL_MS = 1000;
// A request without a response after this long counts as failed.
const REQUEST_TIMEOUT_MS = 3000;
// Seconds shown in each chart: the leader keeps 60 by default (--history-slots).
const WINDOW_SLOTS = 60;
// The leader assigns quotas this many seconds ahead of the current second.
const QUOTA_LEAD_SLOTS = 2;
// Columns of a quota table: the newest quota slots.
const QUOTA_TABLE_SLOTS = 5;
// The sessionStorage key of the access token.
const TOKEN_KEY = 'throttle-central-token';

const page = {
  selection: {service: '', user: ''},
  // Incremented on every new selection, so that responses to an older one are dropped.
  generation: 0,
  timer: null,
  // The central's clock minus the browser's, in ms, from the Date header.
  serverOffsetMs: 0,
  serverTimeKnown: false,
};

// ---- Requests -------------------------------------------------------------

// Sends a GET to a path of this origin. Resolves to {ok, status, body} or
// {ok: false, status, code, message}, and never rejects, so one failed
// request leaves the other panels intact. status is 0 when no HTTP response came.
async function fetchJSON(path) {
  const token = readToken();
  const headers = token === '' ? {} : {Authorization: `Bearer ${token}`};
  let response;
  try {
    response = await fetch(path, {cache: 'no-store', headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)});
  } catch (err) {
    const message = err.name === 'TimeoutError'
      ? `the central did not answer within ${REQUEST_TIMEOUT_MS} ms`
      : `the central did not answer (${err.message})`;
    return {ok: false, status: 0, code: 'network', message};
  }
  noteServerTime(response);
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (response.ok && body !== null) {
    return {ok: true, status: response.status, body};
  }
  if (body && body.error) {
    return {ok: false, status: response.status, code: body.error.code, message: body.error.message};
  }
  return {ok: false, status: response.status, code: 'invalid_response', message: `HTTP ${response.status} without a JSON body`};
}

// Keeps the offset of the central's clock, because slots are the central's
// unix seconds. The Date header has a resolution of one second, so the
// offset is taken from the middle of that second.
// NOTE: the current slot, and so the "now" label, can be off by one.
function noteServerTime(response) {
  const date = Date.parse(response.headers.get('Date') || '');
  if (!Number.isNaN(date)) {
    page.serverOffsetMs = date + 500 - Date.now();
    page.serverTimeKnown = true;
  }
}

// Returns the current slot (unix second) on the central's clock.
function currentSlot() {
  return Math.floor((Date.now() + page.serverOffsetMs) / 1000);
}

function limitPath(service, user) {
  return `/v1/limits/${encodeURIComponent(service)}/${encodeURIComponent(user)}`;
}

function monitorPath(subject, service, user) {
  const query = new URLSearchParams({service, user});
  // Until the central's clock is known, ask for every slot the leader keeps.
  if (page.serverTimeKnown) {
    query.set('start_slot', String(currentSlot() - WINDOW_SLOTS - QUOTA_LEAD_SLOTS));
  }
  return `/v1/monitor/${subject}?${query}`;
}

// ---- Polling --------------------------------------------------------------

// Fetches everything the page shows, draws it and schedules the next poll.
async function poll() {
  const generation = page.generation;
  const started = Date.now();
  const {service, user} = page.selection;
  const selected = service !== '' && user !== '';
  const requests = [fetchJSON('/v1/cluster'), fetchJSON('/v1/members')];
  if (selected) {
    requests.push(
      fetchJSON(limitPath(service, user)),
      fetchJSON(monitorPath('consumption_sum', service, user)),
      fetchJSON(monitorPath('rejection_sum', service, user)),
      fetchJSON(monitorPath('quota', service, user)),
      fetchJSON(monitorPath('reported', service, user)));
  }
  const results = await Promise.all(requests);
  if (generation !== page.generation) {
    return; // restartPolling started a poll for the new selection
  }
  try {
    const [cluster, members, limits, consumption, rejection, quota, reported] = results;
    renderCluster(cluster, members);
    if (selected) {
      renderUser(limits, consumption, rejection, quota, reported);
    } else {
      renderNoSelection();
    }
    renderStatus(results, cluster);
  } catch (err) {
    setStatus('error', `The page failed to draw the data: ${err.message}`);
  } finally {
    page.timer = setTimeout(poll, Math.max(0, POLL_INTERVAL_MS - (Date.now() - started)));
  }
}

function restartPolling() {
  page.generation++;
  clearTimeout(page.timer);
  poll();
}

function renderStatus(results, cluster) {
  const time = new Date().toLocaleTimeString('en-GB');
  // A 404 on the limit means "no limit set", which the limit panel shows.
  const failed = results.filter((result) => !result.ok && result.code !== 'not_found');
  const denied = failed.find((result) => result.status === 401 || result.status === 403);
  if (denied) {
    const hint = denied.status === 401
      ? (readToken() === '' ? 'This central requires an access token: enter a read or admin token above.' : 'The central rejected the token: check it and enter it again.')
      : 'The token lacks the read scope: enter a read or admin token.';
    setStatus('error', `${hint} (${denied.message})`);
  } else if (failed.length === 0) {
    setStatus('ok', `Updated ${time} from ${cluster.body.node_id}`);
  } else if (failed.length === results.length && failed[0].status === 0) {
    setStatus('error', `At ${time} ${failed[0].message}. Retrying every second.`);
  } else {
    setStatus('error', `${failed.length} of ${results.length} requests failed at ${time}; see the panels. Retrying every second.`);
  }
}

function setStatus(state, text) {
  const status = byId('status');
  status.dataset.state = state;
  status.textContent = text;
}

// ---- Access token (kept in sessionStorage) ---------------------------------

// Returns the stored token, or '' when there is none or storage is blocked.
function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch (err) {
    return '';
  }
}

function onTokenSubmit(event) {
  event.preventDefault();
  const input = byId('token');
  const token = input.value.trim();
  try {
    if (token === '') {
      sessionStorage.removeItem(TOKEN_KEY);
    } else {
      sessionStorage.setItem(TOKEN_KEY, token);
    }
  } catch (err) {
    setStatus('error', `The browser does not allow storing the token: ${err.message}`);
    return;
  }
  input.value = '';
  input.placeholder = token === '' ? 'read or admin' : 'token set; empty clears it';
  restartPolling();
}

// ---- Selection (kept in the URL query) ------------------------------------

function readSelection() {
  const query = new URLSearchParams(window.location.search);
  return {service: (query.get('service') || '').trim(), user: (query.get('user') || '').trim()};
}

function showSelection() {
  byId('service').value = page.selection.service;
  byId('user').value = page.selection.user;
}

function onSelectionSubmit(event) {
  event.preventDefault();
  page.selection = {service: byId('service').value.trim(), user: byId('user').value.trim()};
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(page.selection)) {
    if (value !== '') {
      query.set(name, value);
    }
  }
  history.pushState(null, '', query.size > 0 ? `/ui?${query}` : '/ui');
  restartPolling();
}

function onHistoryChange() {
  page.selection = readSelection();
  showSelection();
  restartPolling();
}

// ---- Cluster panel --------------------------------------------------------

function renderCluster(cluster, members) {
  const rows = [];
  if (!cluster.ok) {
    setMessage('cluster-message', 'error', describeError('/v1/cluster', cluster));
    setText('leader', '–');
    setText('leader-addr', '');
    setText('term', '–');
    setText('answered-by', '–');
  } else {
    const status = cluster.body;
    if (status.leader) {
      setMessage('cluster-message', '', '');
    } else {
      setMessage('cluster-message', 'warning', `No leader: ${status.node_id} (${status.state}) knows no leader in term ${status.term}. ` +
        'Limit changes and the monitor data are unavailable until the centrals elect one.');
    }
    setText('leader', status.leader || 'none');
    setText('leader-addr', status.leader_http_addr ? `(${status.leader_http_addr})` : '');
    setText('term', String(status.term));
    setText('answered-by', `${status.node_id} (${status.state}), applied index ${status.applied_index}`);
    for (const server of status.servers || []) {
      rows.push([
        {text: server.leader ? `${server.id} (leader)` : server.id, className: server.leader ? 'leader' : ''},
        server.raft_addr,
        server.http_addr || '–',
        server.suffrage,
        {text: server.gossip || 'off', className: server.gossip ? `state-${server.gossip}` : ''},
      ]);
    }
  }
  fillTable('servers', rows);
  renderMembers(members);
}

function renderMembers(members) {
  const rows = [];
  if (!members.ok) {
    setMessage('members-message', 'error', describeError('/v1/members', members));
  } else if (!members.body.gossip) {
    setMessage('members-message', 'info', 'Gossip is off on this central (started without --gossip-addr).');
  } else if (members.body.members.length === 0) {
    setMessage('members-message', 'info', 'No gossip members.');
  } else {
    setMessage('members-message', '', '');
    for (const member of members.body.members) {
      rows.push([member.node_id, member.role, member.gossip_addr,
        {text: member.state, className: `state-${member.state}`}, formatAge(member.since)]);
    }
  }
  fillTable('members', rows);
}

// ---- User panel -----------------------------------------------------------

function renderNoSelection() {
  setText('user-title', 'Consumption');
  setMessage('user-message', 'info', 'Enter a service and a user, then press Show.');
  byId('user-details').hidden = true;
}

function renderUser(limits, consumption, rejection, quota, reported) {
  const {service, user} = page.selection;
  setText('user-title', `Service ${service}, user ${user}`);
  setMessage('user-message', '', '');
  byId('user-details').hidden = false;
  const limit = renderLimits(limits);
  const now = currentSlot();
  renderConsumption(consumption, limit, now, reportedSlots(reported));
  renderRejections(rejection, now);
  renderQuotas(quota, limit, now);
}

// Fills the limit table. Returns the limit per resource: {} when no limit
// is set, null when the request failed.
function renderLimits(result) {
  const {service, user} = page.selection;
  if (!result.ok) {
    fillTable('limits', []);
    if (result.code === 'not_found') {
      setMessage('limit-message', 'info', `No limit set for user ${user} in service ${service}: the charts have no limit line.`);
      return {};
    }
    setMessage('limit-message', 'error', describeError(limitPath(service, user), result));
    return null;
  }
  const record = result.body;
  const burst = record.burst || {};
  const rows = Object.keys(record.limit).sort().map((resource) => {
    const rate = record.limit[resource];
    return [
      resource,
      {text: formatExact(rate), className: 'number', attributes: {'data-limit': String(rate)}},
      {text: resource in burst ? formatExact(burst[resource]) : `${formatExact(10 * rate)} (default: 10 × limit)`, className: 'number'},
    ];
  });
  setMessage('limit-message', '', '');
  fillTable('limits', rows);
  return record.limit;
}

// reported is the set of seconds in which at least one edge node reported.
// In those, a resource without data consumed 0, as throttlectl monitor shows.
function renderConsumption(result, limit, now, reported) {
  const container = byId('consumption-charts');
  if (!result.ok) {
    setMessage('consumption-message', 'error', describeMonitorError('consumption_sum', result));
    container.replaceChildren();
    return;
  }
  const byResource = sumsByResource(result.body);
  if (byResource.size === 0) {
    const {service, user} = page.selection;
    setMessage('consumption-message', 'info', `No data yet: no edge node reported consumption of user ${user} in service ${service} in the last ${WINDOW_SLOTS} s.`);
  } else {
    setMessage('consumption-message', '', '');
  }
  // Reports carry the previous second, so the newest complete slot is now - 1.
  const end = Math.max(now - 1, newestSlot(byResource.values()));
  const resources = [...new Set([...Object.keys(limit || {}), ...byResource.keys()])].sort();
  container.replaceChildren(...resources.map((resource) => lineChart({
    kind: 'consumption', title: resource, start: end - WINDOW_SLOTS + 1, end, now,
    series: [{name: 'consumption', values: withZeros(byResource.get(resource), reported)}],
    limit: limit ? limit[resource] : undefined,
  })));
}

function renderRejections(result, now) {
  const container = byId('rejection-charts');
  container.replaceChildren();
  if (!result.ok) {
    setMessage('rejection-message', 'error', describeMonitorError('rejection_sum', result));
    return;
  }
  const byResource = sumsByResource(result.body);
  if (byResource.size === 0) {
    setMessage('rejection-message', 'info', `No rejected requests reported in the last ${WINDOW_SLOTS} s.`);
    return;
  }
  setMessage('rejection-message', '', '');
  const end = Math.max(now - 1, newestSlot(byResource.values()));
  const series = [...byResource.keys()].sort().map((resource) => ({name: resource, values: byResource.get(resource)}));
  container.append(lineChart({kind: 'rejection', title: 'rejected requests, by resource', start: end - WINDOW_SLOTS + 1, end, now, series}));
}

function renderQuotas(result, limit, now) {
  const container = byId('quota-charts');
  container.replaceChildren();
  if (!result.ok) {
    setMessage('quota-message', 'error', describeMonitorError('quota', result));
    return;
  }
  const byResource = quotasByResource(result.body);
  if (byResource.size === 0) {
    const reason = limit && Object.keys(limit).length === 0
      ? 'No quota: the leader assigns quotas only to users with a limit.'
      : `No quota assigned in the last ${WINDOW_SLOTS} s: the leader assigns quotas to the nodes that report consumption of this user, ${QUOTA_LEAD_SLOTS} s ahead.`;
    setMessage('quota-message', 'info', reason);
    return;
  }
  setMessage('quota-message', '', '');
  for (const resource of [...byResource.keys()].sort()) {
    const byNode = byResource.get(resource);
    const nodes = [...byNode.keys()].sort();
    const end = Math.max(now + QUOTA_LEAD_SLOTS, newestSlot(byNode.values()));
    const chart = lineChart({
      kind: 'quota', title: resource, start: end - WINDOW_SLOTS + 1, end, now,
      series: nodes.map((node) => ({name: node, values: byNode.get(node)})),
      limit: limit ? limit[resource] : undefined,
    });
    container.append(el('div', {}, chart, quotaTable(resource, byNode, nodes, now)));
  }
}

// Builds the table of each node's quota for the newest slots, with their sum.
function quotaTable(resource, byNode, nodes, now) {
  const allSlots = new Set();
  for (const values of byNode.values()) {
    values.forEach((value, slot) => allSlots.add(slot));
  }
  const slots = [...allSlots].sort((a, b) => a - b).slice(-QUOTA_TABLE_SLOTS);
  const slotClass = (slot) => (slot === now ? 'number current' : 'number');
  const header = el('tr', {}, el('th', {}, 'node'),
    ...slots.map((slot) => el('th', {class: slotClass(slot), title: `slot ${slot}`}, slotLabel(slot, now))));
  const rows = nodes.map((node) => el('tr', {'data-node': node}, el('td', {}, node),
    ...slots.map((slot) => el('td', {class: slotClass(slot)}, formatOptional(byNode.get(node).get(slot))))));
  const totals = slots.map((slot) => {
    let sum = 0;
    nodes.forEach((node) => { sum += byNode.get(node).get(slot) || 0; });
    return el('td', {class: slotClass(slot)}, formatAmount(sum));
  });
  rows.push(el('tr', {class: 'total'}, el('td', {}, 'total'), ...totals));
  return el('table', {class: 'quota-table', 'data-resource': resource}, el('thead', {}, header), el('tbody', {}, ...rows));
}

// ---- Monitor data ---------------------------------------------------------

// Turns consumption_sum or rejection_sum data, slot -> service -> user ->
// resource -> amount, into resource -> Map(slot -> amount) for the selection.
function sumsByResource(data) {
  const {service, user} = page.selection;
  const byResource = new Map();
  for (const [slot, services] of Object.entries(data)) {
    const resources = (services[service] || {})[user] || {};
    for (const [resource, amount] of Object.entries(resources)) {
      if (!byResource.has(resource)) {
        byResource.set(resource, new Map());
      }
      byResource.get(resource).set(Number(slot), amount);
    }
  }
  return byResource;
}

// Returns the set of slots in which at least one edge node reported, from
// the reported data (slot -> [node]); empty when the request failed.
function reportedSlots(result) {
  const slots = new Set();
  if (result && result.ok) {
    for (const [slot, nodes] of Object.entries(result.body)) {
      if (Array.isArray(nodes) && nodes.length > 0) {
        slots.add(Number(slot));
      }
    }
  }
  return slots;
}

// Returns values (Map(slot -> amount), or undefined) with 0 for every slot
// in reported that has no value.
function withZeros(values, reported) {
  const filled = new Map(values || []);
  for (const slot of reported) {
    if (!filled.has(slot)) {
      filled.set(slot, 0);
    }
  }
  return filled;
}

// Turns quota data, slot -> service -> user -> resource -> node -> quota,
// into resource -> node -> Map(slot -> quota) for the selection.
function quotasByResource(data) {
  const {service, user} = page.selection;
  const byResource = new Map();
  for (const [slot, services] of Object.entries(data)) {
    const resources = (services[service] || {})[user] || {};
    for (const [resource, nodes] of Object.entries(resources)) {
      if (!byResource.has(resource)) {
        byResource.set(resource, new Map());
      }
      const byNode = byResource.get(resource);
      for (const [node, quota] of Object.entries(nodes)) {
        if (!byNode.has(node)) {
          byNode.set(node, new Map());
        }
        byNode.get(node).set(Number(slot), quota);
      }
    }
  }
  return byResource;
}

// Returns the newest slot in some Map(slot -> value), or -Infinity for none.
function newestSlot(maps) {
  let newest = -Infinity;
  for (const values of maps) {
    for (const slot of values.keys()) {
      newest = Math.max(newest, slot);
    }
  }
  return newest;
}

// ---- Formatting -----------------------------------------------------------

function formatExact(value) {
  return new Intl.NumberFormat('en-US', {maximumFractionDigits: 3}).format(value);
}

function formatAge(timestamp) {
  const seconds = Math.round((Date.now() + page.serverOffsetMs - Date.parse(timestamp)) / 1000);
  if (Number.isNaN(seconds)) {
    return timestamp;
  }
  if (seconds < 60) {
    return `${Math.max(0, seconds)} s ago`;
  }
  return seconds < 3600 ? `${Math.floor(seconds / 60)} min ago` : `${Math.floor(seconds / 3600)} h ago`;
}

function describeError(request, result) {
  if (result.status === 0) {
    return `GET ${request} failed: ${result.message}.`;
  }
  return `GET ${request} failed with HTTP ${result.status} ${result.code}: ${result.message}`;
}

// Describes a failed monitor request. Only the leader keeps monitor data.
function describeMonitorError(subject, result) {
  if (result.code === 'no_leader' || result.code === 'leader_unreachable') {
    return `No leader: monitor data comes from the leader (${result.message}).`;
  }
  return describeError(`/v1/monitor/${subject}`, result);
}

// ---- DOM helpers ----------------------------------------------------------

function byId(id) {
  return document.getElementById(id);
}

function setText(id, text) {
  byId(id).textContent = text;
}

// Shows text in a message paragraph styled by kind (info, warning, error).
// Empty text hides the paragraph.
function setMessage(id, kind, text) {
  const message = byId(id);
  message.hidden = text === '';
  message.className = `message ${kind}`;
  message.textContent = text;
}

// Replaces the body rows of a table and hides the table when there are none.
// A cell is a string or {text, className, attributes}.
function fillTable(id, rows) {
  const table = byId(id);
  table.hidden = rows.length === 0;
  table.tBodies[0].replaceChildren(...rows.map((cells) => el('tr', {}, ...cells.map((cell) => {
    const {text, className, attributes} = typeof cell === 'string' ? {text: cell} : cell;
    return el('td', {class: className || undefined, ...attributes}, text);
  }))));
}

// ---- Start ----------------------------------------------------------------

function start() {
  page.selection = readSelection();
  showSelection();
  byId('selection').addEventListener('submit', onSelectionSubmit);
  byId('token-form').addEventListener('submit', onTokenSubmit);
  if (readToken() !== '') {
    byId('token').placeholder = 'token set; empty clears it';
  }
  window.addEventListener('popstate', onHistoryChange);
  poll();
}

start();
