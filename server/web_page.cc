#include "server/web_page.h"

namespace flashlm::server {
namespace {

// Panels are computed from differences of /stats between polls: tokens/s from generated_tokens,
// bytes per token and MiB/s from bytes_read and io_wait_ms, I/O vs compute from io_wait_ms and
// forward_ms per generated token. The table of reads by source (/stats by_source: attention, FFN,
// classifier, embedding, other) is per token since the server started, so it stays readable when
// the server is idle.
constexpr std::string_view kPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flashlm serve</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}
#chat{flex:2;display:flex;flex-direction:column;padding:12px;border-right:1px solid #ccc}
#log{flex:1;overflow:auto;white-space:pre-wrap;font-family:monospace}
.user{color:#035}.assistant{color:#222}
#panels{flex:1;padding:12px;overflow:auto}
.panel{margin-bottom:10px}.panel b{display:inline-block;min-width:7em}
canvas{width:100%;height:40px;background:#f4f4f4}
#sources{border-collapse:collapse;font-size:90%;margin-bottom:10px}#sources td,#sources th{padding:1px 6px;text-align:right}
#sources td:first-child{text-align:left}
form{display:flex;gap:6px}#prompt{flex:1}
</style></head><body>
<div id="chat"><h3>flashlm</h3><div id="log"></div>
<form id="form"><input id="prompt" autocomplete="off" placeholder="Say something">
<input id="max" type="number" value="64" min="1" style="width:5em"><button id="send">Send</button></form>
<div id="status"></div></div>
<div id="panels"><h3>Live</h3></div>
<script>
"use strict";
// With `flashlm serve --api-key KEY`, open the page as /?key=KEY: the page is public, the API is not.
const params=new URLSearchParams(location.search),key=params.get("key");
const auth=key?{"Authorization":"Bearer "+key}:{};
// A sequence's step in a forward pass is one token (prompt chunks aside): tokens/s counts them.
const panels=[["tok_s","tokens/s"],["bytes_tok","bytes read/token"],["mib_s","effective MiB/s"],
 ["hit","FFN hit rate"],["io_tok","I/O ms/token"],["cpu_tok","compute ms/token"],["active","active sequences"]];
const series={};
for(const [k,label] of panels){const d=document.createElement("div");d.className="panel";
 d.innerHTML='<b>'+label+'</b> <span id="v_'+k+'">-</span><canvas id="c_'+k+'" width="300" height="40"></canvas>';
 document.getElementById("panels").appendChild(d);series[k]=[];}
function plot(k,v){const s=series[k];s.push(v);if(s.length>60)s.shift();
 document.getElementById("v_"+k).textContent=Number.isFinite(v)?(Math.round(v*100)/100).toString():"-";
 const c=document.getElementById("c_"+k),g=c.getContext("2d");g.clearRect(0,0,c.width,c.height);
 const mx=Math.max(1e-9,...s.filter(Number.isFinite));g.beginPath();
 s.forEach((y,i)=>{const px=i*c.width/59,py=c.height-(Number.isFinite(y)?y:0)/mx*(c.height-2);i?g.lineTo(px,py):g.moveTo(px,py);});g.stroke();}
// Reads by source, per token (a sequence's step in a pass) since the server started.
const sources=["attention","ffn","classifier","embedding","other"];
{const t=document.createElement("table");t.id="sources";
 t.innerHTML="<caption>reads by source, per token since start</caption>"+
  "<tr><th>source</th><th>KiB</th><th>reads</th><th>wait ms</th></tr>"+
  sources.map(n=>'<tr id="s_'+n+'"><td>'+n+"</td><td>-</td><td>-</td><td>-</td></tr>").join("");
 const ps=document.getElementById("panels");ps.insertBefore(t,ps.children[1]);}
function showSources(s){if(!s.by_source||!s.pass_sequences)return;
 for(const n of sources){const c=s.by_source[n];if(!c)continue;const r=document.getElementById("s_"+n).cells,p=s.pass_sequences;
  r[1].textContent=(c.bytes_read/1024/p).toFixed(1);r[2].textContent=(c.reads/p).toFixed(1);
  r[3].textContent=(c.wait_ms/p).toFixed(2);}}
let prev=null;
async function poll(){try{const r=await fetch("/stats",{headers:auth});if(r.ok){const s=await r.json();
 showSources(s);
 if(prev){const dt=(s.now_ms-prev.now_ms)/1000;
  const dp=s.pass_sequences-prev.pass_sequences,dbytes=s.bytes_read-prev.bytes_read,
  dio=s.io_wait_ms-prev.io_wait_ms,dfw=s.forward_ms-prev.forward_ms;
  plot("tok_s",dp/dt);plot("bytes_tok",dp?dbytes/dp:0);plot("mib_s",dio>0?dbytes/1048576/(dio/1000):0);
  plot("hit",s.ffn_hit_rate);plot("io_tok",dp?dio/dp:0);plot("cpu_tok",dp?(dfw-dio)/dp:0);plot("active",s.active);}
 prev=s;}}catch(e){} setTimeout(poll,1000);}
poll();
const history=[];
document.getElementById("form").addEventListener("submit",ev=>{ev.preventDefault();send();});
async function send(){
 const p=document.getElementById("prompt"),text=p.value;p.value="";if(!text)return;
 const log=document.getElementById("log");history.push({role:"user",content:text});
 const u=document.createElement("div");u.className="user";u.textContent="> "+text;log.appendChild(u);
 const a=document.createElement("div");a.className="assistant";a.id="reply"+history.length;log.appendChild(a);
 document.getElementById("status").textContent="streaming";
 const r=await fetch("/v1/chat/completions",{method:"POST",headers:Object.assign({"Content-Type":"application/json"},auth),
  body:JSON.stringify({messages:history,stream:true,max_tokens:Number(document.getElementById("max").value)})});
 if(!r.ok){a.textContent="error "+r.status+": "+await r.text();document.getElementById("status").textContent="error";return;}
 const rd=r.body.getReader(),dec=new TextDecoder();let buf="",reply="";
 for(;;){const {value,done}=await rd.read();if(done)break;buf+=dec.decode(value,{stream:true});
  let i;while((i=buf.indexOf("\n\n"))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);
   if(!ev.startsWith("data: "))continue;const d=ev.slice(6);if(d==="[DONE]")continue;
   const j=JSON.parse(d);if(j.error){a.textContent+=" [error: "+j.error.message+"]";continue;}
   const c=j.choices[0].delta.content;if(c){reply+=c;a.textContent=reply;}}}
 history.push({role:"assistant",content:reply});document.getElementById("status").textContent="done";}
// ?q=TEXT sends TEXT once the page has loaded (links, and the headless browser test).
const q=params.get("q");
if(q){document.getElementById("prompt").value=q;send();}
</script></body></html>
)HTML";

}  // namespace

std::string_view WebPage() { return kPage; }

}  // namespace flashlm::server
