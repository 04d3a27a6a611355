//! The outbox replay: an earlier `fanin` run published its readings while the gateway's
//! MongoDB was down, so they wait in the outbox; MongoDB is now up again. Measured: how
//! long until the first and the last reading is stored, and the replay rate (readings per
//! second from the first to the last); checked: each reading is there exactly once.

use serde_json::json;

use super::fanin::split;
use super::Ctx;
use crate::cli::LandedArgs;
use crate::mongo;
use crate::report::{Errors, Outcome};

pub async fn run(ctx: &Ctx, args: &LandedArgs) -> anyhow::Result<Outcome> {
    let uri = args.mongo.required_uri("landed")?;
    let db = mongo::connect(uri, &args.mongo.database).await?;
    let publishers = args.publishers.max(1);
    let devices: Vec<String> = (0..publishers).map(|i| ctx.device_id("pub", i)).collect();
    let counts = split(args.messages, publishers);
    let landed = mongo::wait_landed(&db, &devices, &counts, None, ctx.deadline).await?;
    Ok(Outcome {
        params: json!({
            "publishers": publishers,
            "messages": args.messages,
            "id_prefix": ctx.prefix,
        }),
        summary: format!("replay: {landed}"),
        deadline_hit: landed.deadline_hit,
        results: serde_json::to_value(&landed)?,
        errors: Errors::default(),
    })
}
