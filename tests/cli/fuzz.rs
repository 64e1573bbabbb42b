//! Property tests: no input makes the message decoder or the schema validator panic, and every
//! valid message survives encode/decode unchanged.

use proptest::prelude::*;
use serde_json::{json, Value};

use ferry::schema::Validator;
use ferry::singer::codec;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("integer"),
            Just("number"),
            Just("string"),
            Just("object"),
            Just("array"),
            Just("null"),
            Just("boolean"),
            Just("date-time")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("type".to_string()),
                        Just("properties".to_string()),
                        Just("items".to_string()),
                        Just("anyOf".to_string()),
                        Just("required".to_string()),
                        Just("format".to_string()),
                        Just("$ref".to_string()),
                        Just("enum".to_string()),
                        "[a-z]{1,4}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::decode(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_json(v in arb_json(), ty in prop_oneof![Just("RECORD"), Just("schema"), Just("STATE"), Just("ACTIVATE_VERSION"), Just("x")]) {
        let mut m = match v { Value::Object(m) => m, other => { let mut m = serde_json::Map::new(); m.insert("record".into(), other); m } };
        m.insert("type".into(), json!(ty));
        let line = Value::Object(m).to_string();
        if let Ok(msg) = codec::decode(line.as_bytes()) {
            // Whatever decodes re-encodes to something that decodes to the same message.
            let mut buf = Vec::new();
            codec::write_message(&mut buf, &msg).unwrap();
            let again = codec::decode(buf.trim_ascii()).unwrap();
            prop_assert_eq!(again, msg);
        }
    }

    #[test]
    fn validator_never_panics(schema in arb_json(), value in arb_json()) {
        if let Ok(v) = Validator::compile(&schema) {
            let _ = v.validate(&value);
            if let Value::Object(m) = &value {
                let _ = v.validate_record(m);
            }
        }
    }
}
