// The "Restricted accounts" page: talks to the admin API of the same origin with the bearer
// token the administrator types once (kept in sessionStorage, i.e. this tab only).
// No framework, no HTML from strings: every value from the API goes into the page as text.
'use strict';

(function () {
  const TOKEN_KEY = 'outbound-guard.admin-token';
  const REFRESH_MS = 5000;
  const TOP_SENDERS = 20;

  const $ = (id) => document.getElementById(id);
  const el = {
    login: $('login'), loginForm: $('login-form'), token: $('token'),
    main: $('main'), status: $('status'), alert: $('alert'), updated: $('updated'),
    search: $('search'), refresh: $('refresh'), signOut: $('sign-out'),
    table: $('restricted'), body: $('restricted-body'), count: $('restricted-count'), empty: $('restricted-empty'),
    sendersBody: $('senders-body'), sendersEmpty: $('senders-empty'),
    addForm: $('add-form'), addAccount: $('add-account'), addReason: $('add-reason'), addUntil: $('add-until'),
    dialog: $('release-dialog'), releaseForm: $('release-form'), releaseAccount: $('release-account'),
    releaseReason: $('release-reason'), releaseError: $('release-error'), releaseCancel: $('release-cancel'),
    releaseConfirm: $('release-confirm'),
    hits: $('search-hits'), sendersTable: $('senders'),
    account: $('account'), accountTitle: $('account-title'), accountName: $('account-name'),
    accountClose: $('account-close'), accountError: $('account-error'), accountBody: $('account-body'),
    accountPolicy: $('account-policy'), accountCounters: $('account-counters'),
    accountRestriction: $('account-restriction'), accountPlot: $('account-plot'),
    historyBody: $('account-history-body'), historyEmpty: $('account-history-empty'),
  };

  let restricted = [];
  let senders = [];
  let sort = { key: 'since', dir: 'desc' };
  let releasing = null; // the account the open dialog is about
  let inFlight = false;
  let memoryToken = null; // when sessionStorage is unavailable
  let opened = null; // the account whose panel is open
  let openedFrom = null; // the control that opened it, to give the focus back
  let panelRequest = 0; // the newest panel request; older answers are dropped
  const MAX_HITS = 8;

  // ---- token ---------------------------------------------------------------------------------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: the token lives only in memory for this page */ }
    memoryToken = t;
  }
  function currentToken() { return token() || memoryToken; }

  function showLogin(message) {
    setToken(null);
    if (el.dialog.open) el.dialog.close();
    el.main.hidden = true;
    el.login.hidden = false;
    el.updated.textContent = '';
    showError(message || '');
    el.token.value = '';
    el.token.focus();
  }

  function showMain() {
    el.login.hidden = true;
    el.main.hidden = false;
  }

  // ---- messages ------------------------------------------------------------------------------

  function say(text) {
    el.status.textContent = text;
  }
  function showError(text) {
    // Setting the same text again would make screen readers repeat it every refresh.
    if (el.alert.textContent !== text) el.alert.textContent = text;
    el.alert.hidden = !text;
  }

  class AuthError extends Error {}

  // One call to the API; throws an Error whose message is fit for the administrator.
  async function api(method, path, body) {
    const t = currentToken();
    if (!t) throw new AuthError('enter the admin token');
    const init = { method, headers: { Authorization: 'Bearer ' + t, Accept: 'application/json' }, cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new Error('cannot reach the filter\'s admin API (is outbound-guard running?)');
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (response.status === 401) {
      throw new AuthError('The admin token was refused; enter it again.');
    }
    if (!response.ok) {
      const detail = data && typeof data.error === 'string' ? data.error : response.statusText || 'request failed';
      throw new Error(detail + ' (HTTP ' + response.status + ')');
    }
    return { status: response.status, data };
  }

  function handleFailure(err) {
    if (err instanceof AuthError) {
      showLogin(err.message);
    } else {
      showError(err.message);
    }
  }

  // ---- formatting ----------------------------------------------------------------------------

  function node(tag, props, children) {
    const n = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === 'text') n.textContent = v;
        else if (k === 'class') n.className = v;
        else if (k === 'data') for (const [dk, dv] of Object.entries(v)) n.dataset[dk] = dv;
        else n.setAttribute(k, v);
      }
    }
    for (const c of children || []) n.append(c);
    return n;
  }

  // "2026-11-22T10:00:00Z" -> "2026-11-22 10:00:00 UTC"
  function utc(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  function timeCell(iso, whenNull) {
    if (!iso) return node('td', { class: 'time muted', text: whenNull });
    return node('td', { class: 'time' }, [node('time', { datetime: iso, text: utc(iso) })]);
  }

  // used/limit as a small bar; a limit of 0 means "no limit": the count alone.
  function usage(label, used, limit) {
    const text = limit > 0 ? used + ' / ' + limit : used + ' (no limit)';
    const wrap = node('span', { class: 'usage' });
    if (limit > 0) {
      const share = Math.min(used / limit, 1);
      const bar = node('span', { class: 'bar' + (used >= limit ? ' full' : share >= 0.8 ? ' high' : ''),
        role: 'img', 'aria-label': label + ': ' + used + ' of ' + limit });
      const fill = node('span');
      fill.style.width = (share * 100).toFixed(1) + '%';
      bar.append(fill);
      wrap.append(bar);
    }
    wrap.append(node('span', { class: 'num', text, 'aria-hidden': limit > 0 ? 'true' : 'false' }));
    return wrap;
  }

  function counterGrid(c) {
    const rows = [
      ['External / hour', c.external_last_hour, c.external_limit_per_hour],
      ['Internal / hour', c.internal_last_hour, c.internal_limit_per_hour],
      ['Last day', c.last_day, c.limit_per_day],
    ];
    const grid = node('div', { class: 'counters' });
    for (const [label, used, limit] of rows) {
      grid.append(node('span', { class: 'label', text: label }), usage(label, used, limit));
    }
    grid.append(node('span', { class: 'label', text: 'Spam' }),
      node('span', { class: 'num', text: c.spam_messages + ' of ' + c.messages + ' messages' }));
    return grid;
  }

  // ---- restricted accounts -------------------------------------------------------------------

  function matches(r, q) {
    if (!q) return true;
    return [r.account, r.reason, r.policy, r.source].some((v) => String(v || '').toLowerCase().includes(q));
  }

  function compare(a, b) {
    let x, y;
    if (sort.key === 'account') { x = a.account; y = b.account; }
    else if (sort.key === 'since') { x = Date.parse(a.created_at); y = Date.parse(b.created_at); }
    else { x = a.until ? Date.parse(a.until) : Infinity; y = b.until ? Date.parse(b.until) : Infinity; }
    const c = x < y ? -1 : x > y ? 1 : a.account < b.account ? -1 : a.account > b.account ? 1 : 0;
    return sort.dir === 'asc' ? c : -c;
  }

  // Which row control has the focus, so a refresh can give it back.
  function focusedControl() {
    const a = document.activeElement;
    return a && a.dataset && a.dataset.account ? { account: a.dataset.account, action: a.dataset.action } : null;
  }
  function restoreFocus(f) {
    if (!f) return;
    const again = Array.from(document.querySelectorAll('[data-action]'))
      .find((b) => b.dataset.account === f.account && b.dataset.action === f.action);
    if (again) again.focus();
  }

  // The account's name as a control that opens its panel.
  function openButton(account, label) {
    return node('button', { type: 'button', class: 'link', text: label || account,
      title: 'Show the history and counters of ' + account, data: { account, action: 'open' } });
  }

  // Accounts of either table that match the search, and the search text itself as an account
  // to look up (the filter also knows released accounts and ones outside the busiest 20).
  function renderHits(q) {
    const raw = el.search.value.trim();
    if (!q) { el.hits.replaceChildren(); el.hits.hidden = true; return; }
    const seen = new Set();
    const found = [];
    for (const a of restricted.map((r) => r.account).concat(senders.map((x) => x.account))) {
      if (found.length >= MAX_HITS) break;
      if (seen.has(a) || !String(a).toLowerCase().includes(q)) continue;
      seen.add(a);
      found.push(a);
    }
    const items = found.map((a) => node('li', {}, [openButton(a)]));
    if (!found.some((a) => String(a).toLowerCase() === q)) {
      items.push(node('li', {}, [openButton(raw, 'Look up “' + raw + '”')]));
    }
    el.hits.replaceChildren(...items);
    el.hits.hidden = false;
  }

  function renderRestricted() {
    const q = el.search.value.trim().toLowerCase();
    const rows = restricted.filter((r) => matches(r, q)).sort(compare);
    const focus = focusedControl();
    const fresh = rows.map((r) => {
      const release = node('button', { type: 'button', class: 'danger', text: 'Release',
        'aria-label': 'Release ' + r.account, data: { account: r.account, action: 'release' } });
      return node('tr', { data: { account: r.account } }, [
        node('th', { scope: 'row', class: 'account' }, [openButton(r.account)]),
        node('td', { class: 'reason' }, [r.reason, node('div', { class: 'muted', text: 'policy ' + r.policy })]),
        timeCell(r.created_at, ''),
        timeCell(r.until, 'until released'),
        node('td', {}, [node('span', { class: 'badge ' + r.source, text: r.source })]),
        node('td', {}, [counterGrid(r.counters || {})]),
        node('td', {}, [release]),
      ]);
    });
    el.body.replaceChildren(...fresh);
    renderHits(q);
    el.count.textContent = q ? '(' + rows.length + ' of ' + restricted.length + ')' : '(' + restricted.length + ')';
    el.empty.hidden = rows.length > 0;
    el.empty.textContent = restricted.length === 0 ? 'No account is restricted.' : 'No restricted account matches the search.';
    for (const th of el.table.querySelectorAll('th[data-sort]')) {
      if (th.dataset.sort === sort.key) th.setAttribute('aria-sort', sort.dir === 'asc' ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    restoreFocus(focus);
  }

  function renderSenders() {
    const rows = senders.map((s) => {
      const c = s.counters || {};
      return node('tr', { data: { account: s.account } }, [
        node('th', { scope: 'row', class: 'account' }, [openButton(s.account)]),
        node('td', { text: s.policy }),
        node('td', {}, [usage('External recipients in the last hour', c.external_last_hour, c.external_limit_per_hour)]),
        node('td', {}, [usage('Internal recipients in the last hour', c.internal_last_hour, c.internal_limit_per_hour)]),
        node('td', {}, [usage('Recipients in the last day', c.last_day, c.limit_per_day)]),
        node('td', { class: 'num', text: c.spam_messages + ' / ' + c.messages }),
        node('td', {}, [s.restricted
          ? node('span', { class: 'badge restricted', text: 'restricted' })
          : node('span', { class: 'badge active', text: 'sending' })]),
      ]);
    });
    el.sendersBody.replaceChildren(...rows);
    el.sendersEmpty.hidden = rows.length > 0;
  }

  async function refresh() {
    if (inFlight || !currentToken()) return;
    inFlight = true;
    try {
      const [r, s] = await Promise.all([
        api('GET', '/api/v1/restricted'),
        api('GET', '/api/v1/senders?top=' + TOP_SENDERS),
      ]);
      restricted = Array.isArray(r.data && r.data.restricted) ? r.data.restricted : [];
      senders = Array.isArray(s.data && s.data.senders) ? s.data.senders : [];
      showMain();
      renderRestricted();
      renderSenders();
      showError('');
      el.updated.textContent = 'Updated ' + utc(new Date().toISOString()) + ' · refreshes every ' + REFRESH_MS / 1000 + ' s';
      if (opened) loadAccount();
      else if (linked) { openAccount(linked); }
      linked = null;
    } catch (err) {
      handleFailure(err);
    } finally {
      inFlight = false;
    }
  }

  // ---- one account: history, counters, plot --------------------------------------------------

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, children) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    for (const c of children || []) n.append(c);
    return n;
  }
  function svgText(x, y, text, cls, anchor) {
    const t = svg('text', { x, y, class: cls || 'plot-label', 'text-anchor': anchor || 'start' });
    t.textContent = text;
    return t;
  }
  function svgTitle(text) {
    const t = svg('title');
    t.textContent = text;
    return t;
  }

  const HOUR_MS = 3600 * 1000;

  // The last 24 clock hours (UTC) up to `now` against the hourly limits. Each whole hour is the
  // highest sample of the recipients the account had in use against each limit (`d.hourly`,
  // README "HTTP API and web page"); an hour the filter did not record is drawn as such, never
  // as zero. The current hour, at the right, is what is in use now. History entries of the
  // window are marked on the time axis.
  function plot(d, now) {
    const c = d.counters || {};
    const W = 480, H = 190, L = 36, R = 110, T = 12, B = 28;
    const pw = W - L - R, ph = H - T - B, slot = pw / 24;
    const hourStart = Math.floor(now / HOUR_MS) * HOUR_MS;
    const from = hourStart - 23 * HOUR_MS;
    const series = [
      { key: 'external', label: 'External', used: c.external_last_hour || 0, limit: c.external_limit_per_hour || 0 },
      { key: 'internal', label: 'Internal', used: c.internal_last_hour || 0, limit: c.internal_limit_per_hour || 0 },
    ];
    // The 23 whole hours, oldest first: null where not recorded.
    const hours = Array.from({ length: 23 }, () => null);
    const given = d.hourly && Array.isArray(d.hourly.hours) ? d.hourly.hours : [];
    for (const h of given) {
      const i = Math.round((Date.parse(h.start) - from) / HOUR_MS);
      const ok = (v) => typeof v === 'number' && v >= 0;
      if (i >= 0 && i < 23 && ok(h.external) && ok(h.internal)) hours[i] = { start: h.start, external: h.external, internal: h.internal };
    }
    const every = d.hourly && d.hourly.sample_seconds ? Math.round(d.hourly.sample_seconds / 60) : 1;
    const peak = Math.max(0, ...hours.filter(Boolean).flatMap((h) => [h.external, h.internal]));
    const top = Math.max(1, peak, ...series.map((s) => Math.max(s.used, s.limit))) * 1.15;
    const y = (v) => T + ph - (v / top) * ph;
    const x = (ms) => L + ((ms - from) / (24 * HOUR_MS)) * pw;
    const recorded = hours.filter(Boolean).length;
    const words = series.map((s) => s.label + ' ' + s.used + (s.limit > 0 ? ' of ' + s.limit : ' (no limit)'));
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'plot', role: 'img',
      'aria-label': 'Recipients in use now: ' + words.join(', ') + '. Of the 23 hours before, ' + recorded +
        ' recorded (highest sample of recipients in use per hour), ' + (23 - recorded) + ' not recorded.' });
    // Runs of hours not recorded, each one grey block.
    for (let i = 0; i < 23;) {
      if (hours[i]) { i++; continue; }
      let j = i;
      while (j < 23 && !hours[j]) j++;
      root.append(svg('rect', { x: L + i * slot, y: T, width: (j - i) * slot, height: ph, class: 'plot-unknown',
        'data-unknown': j - i }, [svgTitle(utc(new Date(from + i * HOUR_MS).toISOString()) + ' to ' +
        utc(new Date(from + j * HOUR_MS).toISOString()) + ': not recorded')]));
      if (j - i >= 6) root.append(svgText(L + ((i + j) / 2) * slot, T + ph / 2, 'not recorded', 'plot-note', 'middle'));
      i = j;
    }
    root.append(svg('line', { x1: L, y1: T + ph, x2: L + pw, y2: T + ph, class: 'plot-axis' }));
    root.append(svg('line', { x1: L, y1: T, x2: L, y2: T + ph, class: 'plot-axis' }));
    root.append(svgText(L - 4, y(0) + 4, '0', 'plot-label', 'end'));
    root.append(svgText(L - 4, T + 8, String(Math.round(top)), 'plot-label', 'end'));
    for (const h of [23, 17, 11, 5]) {
      const at = hourStart - h * HOUR_MS;
      root.append(svgText(x(at), H - 8, new Date(at).toISOString().slice(11, 16), 'plot-label', 'middle'));
    }
    root.append(svgText(L + pw, H - 8, 'now', 'plot-label', 'end'));
    // A bar per class, side by side in each hour's slot.
    const bw = slot / 2 - 1;
    const bar = (i, s, value, hour, title) => root.append(svg('rect', { x: L + i * slot + 1 + (s.key === 'internal' ? bw + 1 : 0),
      y: y(value), width: bw, height: Math.max(0, y(0) - y(value)), class: 'plot-bar ' + s.key,
      'data-series': s.key, 'data-hour': hour, 'data-value': value }, [svgTitle(title)]));
    const against = (s, v) => v + (s.limit > 0 ? ' of ' + s.limit : ' (no limit)');
    hours.forEach((h, i) => {
      if (!h) return;
      for (const s of series) {
        bar(i, s, h[s.key], h.start, s.label + ', ' + utc(h.start).slice(11, 16) + '–' +
          utc(new Date(Date.parse(h.start) + HOUR_MS).toISOString()).slice(11, 16) + ' UTC: at most ' + against(s, h[s.key]) +
          ' in use (highest of the samples taken every ' + every + ' min)');
      }
    });
    for (const s of series) bar(23, s, s.used, 'now', s.label + ' recipients in use now: ' + against(s, s.used));
    // The hourly limits, each with its value; a limit of 0 is none and has no line.
    const limits = series.filter((s) => s.limit > 0);
    limits.forEach((s, i) => {
      const ly = y(s.limit);
      root.append(svg('line', { x1: L, y1: ly, x2: L + pw, y2: ly, class: 'plot-limit ' + s.key, 'data-limit': s.key },
        [svgTitle(s.label + ' limit: ' + s.limit + ' recipients per hour')]));
      // Two limits of the same value would print over each other.
      const same = i > 0 && limits[0].limit === s.limit;
      root.append(svgText(L + pw + 4, ly + 4 + (same ? 12 : 0), s.label.toLowerCase() + ' limit ' + s.limit, 'plot-label ' + s.key));
    });
    if (limits.length === 0) root.append(svgText(L + pw + 4, T + 10, 'no hourly limit', 'plot-label'));
    // What happened to the account within the window.
    for (const e of Array.isArray(d.history) ? d.history : []) {
      const at = Date.parse(e.at);
      if (Number.isNaN(at) || at < from || at > now) continue;
      const ex = x(at);
      root.append(svg('line', { x1: ex, y1: T, x2: ex, y2: T + ph, class: 'plot-event ' + e.action, 'data-action': e.action },
        [svgTitle(e.action + ' ' + utc(e.at) + ' by ' + e.by + (e.reason ? ': ' + e.reason : ''))]));
    }
    return root;
  }

  function describeLimits(l) {
    const parts = [];
    if (l.max_recipients_per_message > 0) parts.push('at most ' + l.max_recipients_per_message + ' recipients per message');
    if (l.spam_percent > 0) {
      parts.push('restricted above ' + l.spam_percent + ' % spam of at least ' + l.spam_min_messages +
        ' messages in ' + l.spam_window_seconds + ' s');
    }
    return parts.join('; ');
  }

  function renderAccount(d, now) {
    el.accountName.textContent = d.account;
    const limits = d.limits || {};
    const more = describeLimits(limits);
    el.accountPolicy.replaceChildren('Policy ', node('strong', { text: d.policy }), more ? ' · ' + more : '');
    el.accountCounters.replaceChildren(counterGrid(d.counters || {}));
    const r = d.restriction;
    if (r) {
      el.accountRestriction.replaceChildren(
        node('span', { class: 'badge restricted', text: 'restricted' }), ' since ',
        node('time', { datetime: r.created_at, text: utc(r.created_at) }), ', ',
        r.until ? node('time', { datetime: r.until, text: 'until ' + utc(r.until) }) : 'until released',
        ' (' + r.source + '): ', node('span', { class: 'reason', text: r.reason }));
    } else {
      el.accountRestriction.replaceChildren(node('span', { class: 'badge active', text: 'sending' }), ' not restricted');
    }
    el.accountPlot.replaceChildren(plot(d, now));
    const history = Array.isArray(d.history) ? d.history : [];
    el.historyBody.replaceChildren(...history.map((e) => node('tr', { data: { action: e.action } }, [
      timeCell(e.at, ''),
      node('td', {}, [node('span', { class: 'badge ' + e.action, text: e.action })]),
      node('td', { class: 'reason', text: e.reason }),
      node('td', { text: e.by }),
      e.action === 'released' ? node('td', { class: 'muted', text: '' }) : timeCell(e.until, 'until released'),
    ])));
    el.historyEmpty.hidden = history.length > 0;
  }

  // Fetches the open account again; `focus` moves the focus to the panel (when it opens).
  async function loadAccount(focus) {
    const account = opened;
    if (!account) return;
    const request = ++panelRequest;
    try {
      const { data } = await api('GET', '/api/v1/senders/' + encodeURIComponent(account));
      if (request !== panelRequest || opened !== account) return;
      // The engine's clock when it read the counters: the plot ends there, whatever the
      // browser's clock or a proxy's Date header say.
      const asOf = data && typeof data.as_of === 'string' ? Date.parse(data.as_of) : NaN;
      renderAccount(data || {}, Number.isNaN(asOf) ? Date.now() : asOf);
      el.accountError.hidden = true;
      el.accountError.textContent = '';
      el.accountBody.hidden = false;
    } catch (err) {
      if (request !== panelRequest || opened !== account) return;
      if (err instanceof AuthError) { handleFailure(err); return; }
      el.accountError.textContent = 'Could not show ' + account + ': ' + err.message;
      el.accountError.hidden = false;
    }
  }

  function openAccount(account, from) {
    if (opened !== account) {
      // Nothing of the account shown before stays while the new one loads.
      el.accountBody.hidden = true;
      el.historyBody.replaceChildren();
      el.historyEmpty.hidden = true;
      el.accountError.hidden = true;
    }
    opened = account;
    openedFrom = from || null;
    el.accountName.textContent = account;
    el.account.hidden = false;
    el.account.scrollIntoView({ block: 'start' });
    el.accountTitle.focus();
    loadAccount();
  }

  function closeAccount() {
    opened = null;
    panelRequest++;
    el.account.hidden = true;
    if (openedFrom) restoreFocus(openedFrom); else el.search.focus();
    openedFrom = null;
  }

  function openFrom(event) {
    if (event.target.closest('button[data-action=release]')) return;
    const b = event.target.closest('button[data-action=open]');
    const row = event.target.closest('tr[data-account]');
    const account = b ? b.dataset.account : row ? row.dataset.account : null;
    if (account) openAccount(account, b ? { account, action: 'open' } : null);
  }

  // ---- release -------------------------------------------------------------------------------

  function openRelease(account) {
    releasing = account;
    el.releaseAccount.textContent = account;
    el.releaseReason.value = '';
    el.releaseError.hidden = true;
    el.releaseError.textContent = '';
    el.releaseConfirm.disabled = false;
    el.dialog.showModal();
    el.releaseReason.focus();
  }

  function closeRelease() {
    const account = releasing;
    releasing = null;
    if (el.dialog.open) el.dialog.close();
    restoreFocus({ account, action: 'release' });
  }

  async function confirmRelease(event) {
    event.preventDefault();
    const account = releasing;
    if (!account) return;
    const reason = el.releaseReason.value.trim();
    const query = reason ? '?reason=' + encodeURIComponent(reason) : '';
    el.releaseConfirm.disabled = true;
    try {
      await api('DELETE', '/api/v1/restricted/' + encodeURIComponent(account) + query);
      releasing = null;
      el.dialog.close();
      say('Released ' + account + '. Its next message is accepted.');
      await refresh();
      el.search.focus();
    } catch (err) {
      el.releaseConfirm.disabled = false;
      if (err instanceof AuthError) { handleFailure(err); return; }
      el.releaseError.textContent = 'Could not release ' + account + ': ' + err.message;
      el.releaseError.hidden = false;
    }
  }

  // ---- manual restriction --------------------------------------------------------------------

  // <input type=datetime-local> gives "2026-11-22T12:30" (no zone); the label says UTC.
  function untilRfc3339(value) {
    if (!value) return undefined;
    return (value.length === 16 ? value + ':00' : value) + 'Z';
  }

  async function addRestriction(event) {
    event.preventDefault();
    const account = el.addAccount.value.trim();
    if (!account) { showError('Enter the account to restrict.'); el.addAccount.focus(); return; }
    const body = { account, reason: el.addReason.value.trim() };
    const until = untilRfc3339(el.addUntil.value);
    if (until) body.until = until;
    const button = el.addForm.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const { status, data } = await api('POST', '/api/v1/restricted', body);
      const name = (data && data.account) || account;
      say(status === 201 ? 'Restricted ' + name + '.' : name + ' was already restricted: its reason and until were replaced (its history keeps both).');
      showError('');
      el.addForm.reset();
      await refresh();
    } catch (err) {
      handleFailure(err instanceof AuthError ? err : new Error('Could not restrict ' + account + ': ' + err.message));
    } finally {
      button.disabled = false;
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  el.loginForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const t = el.token.value.trim();
    if (!t) return;
    setToken(t);
    el.token.value = '';
    showError('');
    say('Loading…');
    refresh().then(() => { if (!el.main.hidden) { say(''); el.search.focus(); } });
  });
  el.signOut.addEventListener('click', () => { say(''); showLogin(''); });
  el.refresh.addEventListener('click', () => { refresh(); });
  el.search.addEventListener('input', renderRestricted);
  // Notification links point here as #account=<account>: start with that account searched.
  // The first good refresh also opens its panel.
  let linked = new URLSearchParams(location.hash.slice(1)).get('account');
  if (linked) el.search.value = linked;
  el.table.querySelector('thead').addEventListener('click', (event) => {
    const b = event.target.closest('button.sort');
    if (!b) return;
    const key = b.dataset.sort;
    sort = sort.key === key ? { key, dir: sort.dir === 'asc' ? 'desc' : 'asc' } : { key, dir: key === 'since' ? 'desc' : 'asc' };
    renderRestricted();
  });
  el.body.addEventListener('click', (event) => {
    const b = event.target.closest('button[data-action=release]');
    if (b) openRelease(b.dataset.account);
    else openFrom(event);
  });
  el.sendersBody.addEventListener('click', openFrom);
  el.hits.addEventListener('click', openFrom);
  el.search.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter') return;
    const first = el.hits.querySelector('button[data-action=open]');
    if (first) { event.preventDefault(); first.click(); }
  });
  el.accountClose.addEventListener('click', closeAccount);
  el.account.addEventListener('keydown', (event) => { if (event.key === 'Escape') closeAccount(); });
  el.releaseForm.addEventListener('submit', confirmRelease);
  el.releaseCancel.addEventListener('click', closeRelease);
  el.dialog.addEventListener('cancel', (event) => { event.preventDefault(); closeRelease(); });
  el.addForm.addEventListener('submit', addRestriction);

  setInterval(() => { if (!document.hidden && !el.main.hidden) refresh(); }, REFRESH_MS);

  if (currentToken()) {
    refresh();
  } else {
    showLogin('');
  }
})();
