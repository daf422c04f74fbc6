/* mplp-graph view: the page script (docs/view.md). Reads the JSON block #mg-data written by
 * mplp_graph/viz/html.py and draws it with cytoscape.js. Every text from the user's graph file
 * reaches the page through textContent or canvas labels, never as HTML. */
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('mg-data').textContent);
  var G = DATA.graph;
  var groupByName = {};
  DATA.groups.forEach(function (g) { groupByName[g.name] = g; });
  var api = { ready: false, readyMs: null };
  window.mgView = api;
  if (DATA.trace) {  // before the graph is drawn: the replay panel takes part of the height
    document.getElementById('app').classList.add('has-replay');
    document.getElementById('replay').hidden = false;
  }

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return String(v);
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
    return Number(v.toPrecision(4)).toString();
  }
  function prod(a) { return a.reduce(function (x, y) { return x * y; }, 1); }
  function unravel(k, shape) {
    var idx = new Array(shape.length);
    for (var i = shape.length - 1; i >= 0; i--) { idx[i] = k % shape[i]; k = Math.floor(k / shape[i]); }
    return idx;
  }
  function ravel(idx, shape) {
    var k = 0;
    for (var i = 0; i < shape.length; i++) k = k * shape[i] + idx[i];
    return k;
  }

  // ------------------------------------------------------------------------------------------
  // header, legend

  $('title').textContent = G.name;
  $('desc').textContent = G.description;
  $('desc').title = G.description;
  var legend = $('legend');
  var kinds = {};
  DATA.groups.forEach(function (g) { kinds[g.kind] = g.color; });
  Object.keys(kinds).forEach(function (k) {
    var s = el('span'); var sw = el('span', 'swatch'); sw.style.background = kinds[k]; s.appendChild(sw); s.appendChild(document.createTextNode(k)); legend.appendChild(s);
  });
  Object.keys(DATA.phase_colors).forEach(function (p) {
    var s = el('span'); var ln = el('span', 'line'); ln.style.borderTopColor = DATA.phase_colors[p];
    if (p !== 'forward') ln.style.borderTopStyle = 'dashed';
    s.appendChild(ln); s.appendChild(document.createTextNode(p + ' arrow')); legend.appendChild(s);
  });
  legend.appendChild(el('span', 'hint', 'step: ' + G.step.join(' \u2192 ') + (G.params ? ' \u00b7 ' + G.params.toLocaleString() + ' learner parameters' : '')));

  // ------------------------------------------------------------------------------------------
  // the group view

  function groupLabel(g) { return g.name + '\n' + g.kind + ' ' + g.shape_text; }
  function labelWidth(text) {
    return Math.max.apply(null, text.split('\n').map(function (l) { return l.length; })) * 7.2 + 22;
  }
  var elements = [];
  DATA.groups.forEach(function (g) {
    var label = groupLabel(g);
    elements.push({ group: 'nodes', classes: 'group', position: { x: g.x, y: g.y },
      data: { id: 'g:' + g.name, name: g.name, label: label, color: g.color, w: labelWidth(label), h: 40 } });
  });
  DATA.arrows.forEach(function (a, i) {
    elements.push({ group: 'edges', classes: 'arrow' + (a.phase === 'forward' ? '' : ' dashed'),
      data: { id: 'a:' + i, index: i, source: 'g:' + a.src, target: 'g:' + a.dst, name: a.name, label: a.label, baseLabel: a.label,
        color: a.color, width: 1.6 } });
  });

  var cy = cytoscape({
    container: $('cy'),
    elements: elements,
    layout: { name: 'preset', fit: true, padding: 40 },
    minZoom: 0.05, maxZoom: 8,
    style: [
      { selector: 'node.group', style: { shape: 'round-rectangle', 'background-color': 'data(color)', label: 'data(label)', 'text-wrap': 'wrap',
        'text-valign': 'center', 'text-halign': 'center', width: 'data(w)', height: 'data(h)', 'border-width': 1, 'border-color': '#444',
        'font-size': 12, 'font-family': 'Helvetica, Arial, sans-serif' } },
      { selector: 'node.group.expanded', style: { 'text-valign': 'top', 'text-halign': 'center', 'background-opacity': 0.18, padding: 14, 'text-margin-y': -4 } },
      { selector: 'node.agent', style: { shape: 'rectangle', width: 'data(size)', height: 'data(size)', 'background-color': 'data(color)',
        'border-width': 0.4, 'border-color': '#555', label: 'data(label)', 'font-size': 5, 'text-valign': 'center', 'text-halign': 'center' } },
      { selector: 'edge.arrow', style: { 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'line-color': 'data(color)',
        'target-arrow-color': 'data(color)', width: 'data(width)', label: 'data(label)', 'font-size': 10, 'text-background-color': '#fff',
        'text-background-opacity': 0.85, 'text-background-padding': 2, 'control-point-step-size': 46, 'loop-direction': '-30deg',
        'loop-sweep': '-50deg', 'arrow-scale': 0.9 } },
      { selector: 'edge.dashed', style: { 'line-style': 'dashed' } },
      { selector: 'edge.agent-edge', style: { 'curve-style': 'haystack', width: 0.5, 'line-color': 'data(color)', opacity: 0.45 } },
      { selector: '.faded', style: { opacity: 0.12 } },
      { selector: 'node.hl', style: { 'border-width': 3, 'border-color': '#e67e22' } },
      { selector: 'edge.hl', style: { 'line-color': '#e67e22', 'target-arrow-color': '#e67e22', width: 4 } }
    ]
  });
  api.cy = cy;
  if (cy.zoom() > 1.4) { cy.zoom(1.4); cy.center(); }  // a graph of one or two groups: not huge

  // ------------------------------------------------------------------------------------------
  // details and tooltips (text only)

  function dl(rows) {
    var d = el('dl');
    rows.forEach(function (r) {
      if (r[1] === undefined || r[1] === null || r[1] === '') return;
      d.appendChild(el('dt', null, r[0])); d.appendChild(el('dd', null, r[1]));
    });
    return d;
  }
  function show(nodes) {
    var box = $('details');
    box.replaceChildren();
    nodes.forEach(function (n) { box.appendChild(n); });
  }
  function kernelText(k) {
    if (k === null || k === undefined) return null;
    var K = DATA.kernels[k];
    var s = K.phase + ' stage ' + (K.stage + 1) + ', ' + K.op + ', ' + K.lowering;
    if (K.fused) s += '; fused with ' + K.arrows.length + ' arrows: ' + K.arrows.join(', ');
    return s;
  }
  function groupDetails(g) {
    var rows = [['kind', g.kind], ['agents', g.shape_text + ' = ' + g.n_agents.toLocaleString()]];
    if (g.n_shown < g.n_agents) rows.push(['when expanded', 'the first ' + g.window.join(' x ') + ' agents (' + g.n_shown + ' of ' + g.n_agents + ')']);
    var ins = DATA.arrows.filter(function (a) { return a.dst === g.name; }).map(function (a) { return a.name; });
    var outs = DATA.arrows.filter(function (a) { return a.src === g.name; }).map(function (a) { return a.name; });
    rows.push(['arrows in', ins.join(', ')]); rows.push(['arrows out', outs.join(', ')]);
    var nodes = [el('div', 'name', g.name), dl(rows), el('div', 'hint', 'fields')];
    nodes.push(dl(g.fields.map(function (f) { return [f.name, f.text]; })));
    return nodes;
  }
  function arrowDetails(a) {
    var args = Object.keys(a.args).map(function (k) { return k + '=' + a.args[k]; }).join(', ');
    var upd = Object.keys(a.updates).map(function (k) { return k + ' \u2190 ' + a.updates[k]; }).join(', ');
    return [el('div', 'name', a.name), dl([
      ['from \u2192 to', a.src + ' \u2192 ' + a.dst + (a.reflexive ? ' (reflexive)' : '')], ['phase', a.phase + (a.stage !== null ? ', stage ' + (a.stage + 1) : '')],
      ['op', a.op + (args ? '(' + args + ')' : '')], ['reads', a.inputs.join(', ')], ['connectivity', a.map],
      ['agent edges', a.agent_edges_total.toLocaleString()], ['aggregate', a.into ? a.aggregate : null], ['into', a.into ? a.dst + '.' + a.into : 'no message'],
      ['updates', upd], ['share key', a.share], ['parameters', a.params ? a.params.toLocaleString() : null], ['kernel', kernelText(a.kernel)]
    ])];
  }
  var tip = $('tooltip');
  function tooltip(text, evt) {
    tip.textContent = text;
    tip.hidden = false;
    var e = evt.originalEvent || evt;
    tip.style.left = (e.clientX + 14) + 'px';
    tip.style.top = (e.clientY + 12) + 'px';
  }
  function hideTip() { tip.hidden = true; }

  cy.on('mouseover', 'node.group', function (evt) {
    var g = groupByName[evt.target.data('name')];
    tooltip(g.name + ': ' + g.kind + ' ' + g.shape_text + ', ' + g.n_agents.toLocaleString() + ' agents\nfields: ' +
      g.fields.map(function (f) { return f.name; }).join(', ') + '\nclick to ' + (expanded[g.name] ? 'fold' : 'expand'), evt);
    show(groupDetails(g));
  });
  cy.on('mouseover', 'edge.arrow', function (evt) {
    var a = DATA.arrows[evt.target.data('index')];
    tooltip(a.name + ' (' + a.phase + '): ' + a.op + ', ' + a.map + (a.into ? ' \u2192 ' + a.dst + '.' + a.into : ''), evt);
    show(arrowDetails(a));
  });
  cy.on('mouseover', 'node.agent', function (evt) {
    var n = evt.target;
    tooltip(n.data('name') + agentValues(n.data('group'), n.data('full')), evt);
  });
  cy.on('mouseout', hideTip);
  cy.on('tap', 'edge.arrow', function (evt) { show(arrowDetails(DATA.arrows[evt.target.data('index')])); });
  cy.on('tap', 'node.group', function (evt) { toggle(evt.target.data('name')); show(groupDetails(groupByName[evt.target.data('name')])); });
  $('fit').addEventListener('click', function () { cy.fit(undefined, 40); if (cy.zoom() > 1.4) { cy.zoom(1.4); cy.center(); } });

  // ------------------------------------------------------------------------------------------
  // expanding a group into its agents

  var expanded = {};
  function agentShape2(w) {  // rows x columns of the agents' places
    if (w.length === 0) return [1, 1];
    if (w.length === 1) return w[0] <= 64 ? [w[0], 1] : [Math.ceil(w[0] / Math.ceil(Math.sqrt(w[0]))), Math.ceil(Math.sqrt(w[0]))];
    return [w[0], prod(w.slice(1))];
  }
  function agentId(g, k) { return 'n:' + g + ':' + k; }
  function moveGroup(name, dx, dy) {
    var node = cy.getElementById('g:' + name);
    if (expanded[name]) node.children().shift({ x: dx, y: dy }); else node.shift({ x: dx, y: dy });
  }
  function expand(name) {
    var g = groupByName[name];
    if (!g || expanded[name]) return;
    var node = cy.getElementById('g:' + name);
    var c = node.position();
    var rc = agentShape2(g.window);
    var size = Math.max(4, Math.min(18, Math.floor(520 / Math.max(rc[0], rc[1]))));
    var gap = size * 1.4;
    var adds = [];
    var labels = g.n_shown <= 100;
    for (var k = 0; k < g.n_shown; k++) {
      var idx = unravel(k, g.window);
      var r, col;
      if (g.window.length === 1 && rc[1] > 1) { r = Math.floor(k / rc[1]); col = k % rc[1]; }
      else if (g.window.length === 0) { r = 0; col = 0; }
      else { r = idx[0]; col = g.window.length === 1 ? 0 : ravel(idx.slice(1), g.window.slice(1)); }
      var full = ravel(idx, g.shape);
      adds.push({ group: 'nodes', classes: 'agent', position: { x: c.x + (col - (rc[1] - 1) / 2) * gap, y: c.y + (r - (rc[0] - 1) / 2) * gap },
        data: { id: agentId(name, k), parent: 'g:' + name, name: name + '[' + idx.join(',') + ']', group: name, full: full,
          label: labels ? idx.join(',') : '', color: g.color, size: size } });
    }
    var before = node.boundingBox();
    cy.batch(function () {
      cy.add(adds);
      node.addClass('expanded');
    });
    expanded[name] = true;
    addAgentEdges(name);
    var after = node.boundingBox();
    var dx = Math.max(0, (after.w - before.w) / 2), dy = Math.max(0, (after.h - before.h) / 2);
    var shifts = {};
    DATA.groups.forEach(function (o) {
      if (o.name === name) return;
      var p = expanded[o.name] ? cy.getElementById('g:' + o.name).boundingBox() : null;
      var q = p ? { x: (p.x1 + p.x2) / 2, y: (p.y1 + p.y2) / 2 } : cy.getElementById('g:' + o.name).position();
      var sx = q.x > c.x + 1 ? dx : (q.x < c.x - 1 ? -dx : 0);
      var sy = Math.abs(q.x - c.x) <= 1 ? (q.y > c.y ? dy : -dy) : 0;
      shifts[o.name] = [sx, sy];
      moveGroup(o.name, sx, sy);
    });
    expanded[name] = shifts;
    paintAgents();
  }
  function collapse(name) {
    var shifts = expanded[name];
    if (!shifts) return;
    var node = cy.getElementById('g:' + name);
    cy.batch(function () {
      node.children().remove();
      node.removeClass('expanded');
    });
    delete expanded[name];
    Object.keys(shifts).forEach(function (o) { moveGroup(o, -shifts[o][0], -shifts[o][1]); });
  }
  function toggle(name) { if (expanded[name]) collapse(name); else expand(name); }
  function addAgentEdges(name) {
    var adds = [];
    DATA.arrows.forEach(function (a, i) {
      if (a.src !== name && a.dst !== name) return;
      if (!expanded[a.src] || !expanded[a.dst]) return;
      var e = a.agent_edges;
      for (var j = 0; j < e.length; j += 2) {
        var id = 'e:' + i + ':' + (j / 2);
        if (cy.getElementById(id).length) continue;
        adds.push({ group: 'edges', classes: 'agent-edge', data: { id: id, source: agentId(a.src, e[j]), target: agentId(a.dst, e[j + 1]), color: a.color, name: a.name } });
      }
    });
    if (adds.length) cy.add(adds);
  }
  api.expand = expand;
  api.collapse = collapse;
  api.isExpanded = function (name) { return !!expanded[name]; };
  api.counts = function () {
    return { groups: cy.nodes('.group').length, arrows: cy.edges('.arrow').length, agents: cy.nodes('.agent').length, agentEdges: cy.edges('.agent-edge').length };
  };

  // ------------------------------------------------------------------------------------------
  // search

  var search = $('search');
  function runSearch() {
    var q = search.value.trim().toLowerCase();
    cy.elements().removeClass('faded hl');
    if (!q) { $('search-count').textContent = ''; return cy.collection(); }
    var hits = cy.elements('.group, .arrow').filter(function (e) { return String(e.data('name')).toLowerCase().indexOf(q) >= 0; });
    cy.elements('.group, .arrow').difference(hits).addClass('faded');
    hits.addClass('hl');
    $('search-count').textContent = hits.length + (hits.length === 1 ? ' match' : ' matches');
    return hits;
  }
  search.addEventListener('input', runSearch);
  search.addEventListener('keydown', function (e) {
    if (e.key === 'Enter') { var hits = runSearch(); if (hits.length) cy.animate({ fit: { eles: hits, padding: 80 }, duration: 250 }); }
  });

  // ------------------------------------------------------------------------------------------
  // kernels

  (function kernelTable() {
    var t = $('kernels');
    var head = el('thead'); var hr = el('tr');
    ['phase', 'stage', 'op', 'arrows', 'agents', 'lowering'].forEach(function (h) { hr.appendChild(el('th', null, h)); });
    head.appendChild(hr); t.appendChild(head);
    var body = el('tbody');
    var fused = 0;
    DATA.kernels.forEach(function (K, k) {
      var tr = el('tr', K.fused ? 'fused' : null);
      tr.appendChild(el('td', null, K.phase)); tr.appendChild(el('td', null, K.stage + 1)); tr.appendChild(el('td', null, K.op));
      var td = el('td', null, K.arrows.join(', '));
      if (K.fused) { td.appendChild(el('span', 'badge', 'fused')); fused++; }
      tr.appendChild(td); tr.appendChild(el('td', null, K.agents.toLocaleString())); tr.appendChild(el('td', null, K.lowering));
      tr.addEventListener('click', function () {
        Array.prototype.forEach.call(body.children, function (r) { r.classList.remove('selected'); });
        tr.classList.add('selected');
        cy.elements().removeClass('hl faded');
        var names = {}; K.arrows.forEach(function (n) { names[n] = true; });
        cy.edges('.arrow').filter(function (e) { return names[e.data('name')]; }).addClass('hl');
        show([el('div', 'name', 'kernel ' + (k + 1)), dl([['phase', K.phase + ', stage ' + (K.stage + 1)], ['op', K.op], ['arrows', K.arrows.join(', ')],
          ['agents', K.agents.toLocaleString()], ['lowering', K.lowering], ['share key', K.share]])]);
      });
      body.appendChild(tr);
    });
    t.appendChild(body);
    $('kernel-count').textContent = '(' + DATA.kernels.length + ', ' + fused + ' fused)';
  })();

  // ------------------------------------------------------------------------------------------
  // replay

  var T = DATA.trace;
  var current = 0;
  var records = [];
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  var COOLWARM = [[59, 76, 192], [124, 159, 249], [192, 212, 245], [242, 242, 242], [242, 203, 183], [238, 132, 104], [180, 4, 38]];
  function lut(stops) {
    var out = new Uint8ClampedArray(256 * 3);
    for (var i = 0; i < 256; i++) {
      var t = i / 255 * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
      for (var c = 0; c < 3; c++) out[3 * i + c] = Math.round(stops[k][c] * (1 - f) + stops[k + 1][c] * f);
    }
    return out;
  }
  var LUT = { seq: lut(VIRIDIS), div: lut(COOLWARM) };
  function scaleOf(rec) {  // signed data: a diverging map centred on 0; otherwise lo..hi
    if (rec.lo < 0 && rec.hi > 0) { var m = Math.max(-rec.lo, rec.hi); return { lut: LUT.div, lo: -m, hi: m }; }
    return { lut: LUT.seq, lo: rec.lo, hi: rec.hi };
  }
  function colorIndex(v, s) {
    if (!isFinite(v)) return -1;
    var t = s.hi > s.lo ? (v - s.lo) / (s.hi - s.lo) : 0.5;
    return Math.max(0, Math.min(255, Math.round(t * 255)));
  }
  function colorOf(v, s) {
    var i = colorIndex(v, s);
    if (i < 0) return [255, 0, 255];
    return [s.lut[3 * i], s.lut[3 * i + 1], s.lut[3 * i + 2]];
  }
  function decode(b64) {
    var bin = atob(b64), n = bin.length, bytes = new Uint8Array(n);
    for (var i = 0; i < n; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  function recordsOf(group) { return records.filter(function (r) { return r.group === group; }); }
  function agentValues(group, full) {
    var out = '';
    recordsOf(group).forEach(function (r) {
      out += '\n' + r.title + ' = ' + fmt(r.values[current * r.n + full]);
    });
    return out;
  }

  function heatmapCard(rec, parent) {
    var card = el('div', 'card');
    card.dataset.record = rec.name;
    var what = rec.kind === 'message' ? 'message of ' + rec.arrow + ' \u2192 ' + rec.group + '.' + rec.field : rec.name;
    rec.title = rec.kind === 'message' ? rec.arrow + ' msg' : rec.name;
    if (rec.reduce === 'norm') { what = '|' + what + '|'; rec.title = '|' + rec.title + '|'; }
    card.appendChild(el('h3', null, what));
    var shape = rec.shape;
    var rc = shape.length === 0 ? [1, 1] : shape.length === 1 ? [1, shape[0]] : [shape[0], prod(shape.slice(1))];
    var px = Math.max(1, Math.min(24, Math.floor(Math.min(420 / rc[1], 300 / rc[0]))));
    var canvas = el('canvas', 'heat');
    canvas.width = rc[1] * px; canvas.height = rc[0] * px;
    card.appendChild(el('div', 'meta', '[' + (shape.join(' x ') || 'scalar') + ']' + (rec.reduce === 'norm' ? ' norm over [' + rec.feature_shape.join(',') + ']' : '') +
      ', range over the run ' + fmt(rec.lo) + ' .. ' + fmt(rec.hi)));
    card.appendChild(canvas);
    var bar = el('div', 'colorbar');
    var s = scaleOf(rec);
    var bc = el('canvas'); bc.width = 120; bc.height = 8;
    var bctx = bc.getContext('2d');
    for (var i = 0; i < 120; i++) { var c = colorOf(s.lo + (s.hi - s.lo) * i / 119, s); bctx.fillStyle = 'rgb(' + c.join(',') + ')'; bctx.fillRect(i, 0, 1, 8); }
    bar.appendChild(el('span', null, fmt(s.lo))); bar.appendChild(bc); bar.appendChild(el('span', null, fmt(s.hi)));
    card.appendChild(bar);
    var readout = el('div', 'readout', '\u00a0');
    card.appendChild(readout);
    parent.appendChild(card);
    var off = document.createElement('canvas'); off.width = rc[1]; off.height = rc[0];
    rec.canvas = canvas; rec.px = px; rec.rc = rc; rec.scale = s; rec.off = off; rec.offctx = off.getContext('2d');
    rec.image = rec.offctx.createImageData(rc[1], rc[0]); rec.ctx = canvas.getContext('2d'); rec.ctx.imageSmoothingEnabled = false;
    canvas.addEventListener('mousemove', function (e) {
      var b = canvas.getBoundingClientRect();
      var r = Math.floor((e.clientY - b.top) / px), col = Math.floor((e.clientX - b.left) / px);
      if (r < 0 || col < 0 || r >= rc[0] || col >= rc[1]) return;
      var k = r * rc[1] + col;
      var idx = rec.shape.length ? unravel(k, rec.shape) : [];
      readout.textContent = rec.group + '[' + idx.join(',') + '] = ' + fmt(rec.values[current * rec.n + k]) + ' at step ' + current;
    });
  }
  function drawRecord(rec) {
    var d = rec.image.data, v = rec.values, base = current * rec.n, s = rec.scale;
    for (var k = 0; k < rec.n; k++) {
      var i = colorIndex(v[base + k], s), o = 4 * k;
      if (i < 0) { d[o] = 255; d[o + 1] = 0; d[o + 2] = 255; } else { d[o] = s.lut[3 * i]; d[o + 1] = s.lut[3 * i + 1]; d[o + 2] = s.lut[3 * i + 2]; }
      d[o + 3] = 255;
    }
    rec.offctx.putImageData(rec.image, 0, 0);
    rec.ctx.imageSmoothingEnabled = false;
    rec.ctx.drawImage(rec.off, 0, 0, rec.canvas.width, rec.canvas.height);
  }

  var curves = [];
  function curveCard(name, values, parent) {
    var card = el('div', 'card');
    card.appendChild(el('h3', null, name));
    var canvas = el('canvas'); canvas.width = 260; canvas.height = 110;
    card.appendChild(canvas);
    var readout = el('div', 'readout', '\u00a0');
    card.appendChild(readout);
    parent.appendChild(card);
    var finite = values.filter(function (v) { return v !== null; });
    curves.push({ name: name, values: values, canvas: canvas, readout: readout, lo: Math.min.apply(null, finite), hi: Math.max.apply(null, finite) });
  }
  function drawCurve(c) {
    var ctx = c.canvas.getContext('2d'), W = c.canvas.width, H = c.canvas.height, n = c.values.length;
    var L = 44, R = 6, TOP = 6, B = 16;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = '#666'; ctx.font = '10px sans-serif';
    ctx.fillText(fmt(c.hi), 2, TOP + 8); ctx.fillText(fmt(c.lo), 2, H - B);
    ctx.fillText('0', L, H - 3); ctx.fillText(String(n - 1), W - R - 12, H - 3);
    ctx.strokeStyle = '#ccc'; ctx.strokeRect(L, TOP, W - L - R, H - TOP - B);
    function X(i) { return L + (W - L - R) * (n > 1 ? i / (n - 1) : 0.5); }
    function Y(v) { return c.hi > c.lo ? TOP + (H - TOP - B) * (1 - (v - c.lo) / (c.hi - c.lo)) : (H - B + TOP) / 2; }
    ctx.strokeStyle = '#1f77b4'; ctx.lineWidth = 1.5; ctx.beginPath();
    var started = false;
    c.values.forEach(function (v, i) { if (v === null) return; if (!started) { ctx.moveTo(X(i), Y(v)); started = true; } else ctx.lineTo(X(i), Y(v)); });
    ctx.stroke();
    ctx.strokeStyle = '#e67e22'; ctx.beginPath(); ctx.moveTo(X(current), TOP); ctx.lineTo(X(current), H - B); ctx.stroke();
    var v = c.values[current];
    c.readout.textContent = 'step ' + current + ': ' + (v === null ? 'not measured' : fmt(v));
  }

  function paintAgents() {
    if (!T) return;
    cy.batch(function () {
      Object.keys(expanded).forEach(function (name) {
        var rec = recordsOf(name)[0];
        if (!rec) return;
        cy.getElementById('g:' + name).children().forEach(function (n) {
          var c = colorOf(rec.values[current * rec.n + n.data('full')], rec.scale);
          n.data('color', 'rgb(' + c.join(',') + ')');
        });
      });
    });
  }
  function paintArrows() {
    var msgs = records.filter(function (r) { return r.kind === 'message'; });
    cy.batch(function () {
      msgs.forEach(function (r) {
        var e = cy.edges('.arrow').filter(function (x) { return x.data('name') === r.arrow; });
        var top = Math.max.apply(null, r.mean) || 1;
        e.data('width', 1.2 + 7 * r.mean[current] / top);
        e.data('label', e.data('baseLabel') + '  |m| ' + fmt(r.mean[current]));
      });
    });
  }
  function setStep(t) {
    if (!T) return;
    current = Math.max(0, Math.min(T.steps, Math.round(t)));
    $('slider').value = String(current);
    $('step-label').textContent = 'step ' + current + ' / ' + T.steps + (current === 0 ? ' (before the first)' : '');
    records.forEach(drawRecord);
    curves.forEach(drawCurve);
    paintArrows();
    paintAgents();
  }
  api.setStep = setStep;
  api.step = function () { return current; };
  api.heatmap = function (name) {
    var r = records.filter(function (x) { return x.name === name; })[0];
    if (!r) return null;
    return { step: current, values: Array.prototype.slice.call(r.values, current * r.n, (current + 1) * r.n), rows: r.rc[0], cols: r.rc[1], px: r.px,
      lo: r.scale.lo, hi: r.scale.hi, reduce: r.reduce };
  };
  api.colorOf = function (name, v) { var r = records.filter(function (x) { return x.name === name; })[0]; return colorOf(v, r.scale); };
  api.replayRate = function (rounds) {  // steps drawn per second, everything redrawn each step
    var t0 = performance.now(), n = 0;
    for (var k = 0; k < rounds; k++) for (var t = 0; t <= T.steps; t++) { setStep(t); n++; }
    return n / ((performance.now() - t0) / 1000);
  };

  if (T) {
    $('slider').max = String(T.steps);
    var src = T.meta && T.meta.source ? T.meta.source : {};
    $('trace-source').textContent = (T.file ? T.file + ': ' : '') + T.steps + ' steps' + (T.meta && T.meta.batch > 1 ? ', example ' + T.meta.example + ' of a batch of ' + T.meta.batch : '') +
      (src.config ? ', ' + src.config : '') + (src.learner ? ', learner ' + src.learner : '');
    var hm = $('heatmaps'), cv = $('curves');
    T.records.forEach(function (r) {
      r.values = decode(r.data); r.n = prod(r.shape); delete r.data;
      records.push(r);
      heatmapCard(r, hm);
    });
    Object.keys(T.metrics).forEach(function (m) { curveCard(m, T.metrics[m], cv); });
    $('slider').addEventListener('input', function () { stop(); setStep(Number($('slider').value)); });
    var timer = null;
    var stop = function () { if (timer) { clearInterval(timer); timer = null; $('play').textContent = 'play'; } };
    $('play').addEventListener('click', function () {
      if (timer) { stop(); return; }
      if (current >= T.steps) setStep(0);
      $('play').textContent = 'pause';
      timer = setInterval(function () { if (current >= T.steps) { stop(); return; } setStep(current + 1); }, 1000 / Number($('speed').value));
    });
    $('speed').addEventListener('change', function () { if (timer) { stop(); $('play').click(); } });
    setStep(0);
  }

  requestAnimationFrame(function () {
    requestAnimationFrame(function () { cy.resize(); api.ready = true; api.readyMs = performance.now(); });
  });
})();
