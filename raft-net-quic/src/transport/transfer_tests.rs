use super::*;

fn offer(total_bytes: u64) -> SnapshotOffer {
    SnapshotOffer {
        transfer_id: 1,
        total_bytes,
        meta: Bytes::new(),
    }
}

fn policy() -> OfferPolicy {
    OfferPolicy {
        this: 1,
        allowed: true,
        limit: 1000,
        has_sink: true,
    }
}

/// Runs a whole transfer between the two machines, the receiver holding
/// `held` bytes already; returns the frames the sender put on the wire
/// and what the receiver stored.
fn transfer(data: &[u8], chunk: usize, held: u64) -> (Vec<Frame>, Vec<u8>, ReceiverStep) {
    let mut rx = Receiving::resume(data.len() as u64, held).unwrap();
    let start = on_offer_answer(
        Some(Frame::SnapshotResume {
            offset: rx.offset(),
        }),
        data.len() as u64,
    )
    .unwrap();
    let mut tx = Sending::new(data.len() as u64, chunk, start);
    let mut sent = Vec::new();
    let mut stored = data[..held as usize].to_vec();
    while let Some((offset, len)) = tx.next_read() {
        let bytes = Bytes::copy_from_slice(&data[offset as usize..offset as usize + len]);
        if let Some(frame) = tx.on_data(bytes).unwrap() {
            sent.push(frame.clone());
            match rx.on_frame(frame) {
                ReceiverStep::Write { data, .. } => {
                    stored.extend_from_slice(&data);
                    rx.wrote(data.len() as u64);
                }
                other => panic!("chunk refused: {other:?}"),
            }
        }
    }
    let last = rx.on_frame(tx.done());
    (sent, stored, last)
}

#[test]
fn a_whole_transfer_delivers_every_byte_and_the_checksum() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let (sent, stored, last) = transfer(&data, 64, 0);
    assert_eq!(sent.len(), 16, "1000 bytes in chunks of 64");
    assert_eq!(stored, data);
    assert_eq!(
        last,
        ReceiverStep::Finish {
            total_bytes: 1000,
            crc32c: crc32c::crc32c(&data)
        }
    );
}

#[test]
fn a_resumed_transfer_sends_only_the_rest_but_checksums_the_whole() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    let (sent, stored, last) = transfer(&data, 64, 300);
    let first = match &sent[0] {
        Frame::SnapshotChunk(c) => c.offset,
        other => panic!("{other:?}"),
    };
    assert_eq!(first, 300, "nothing before the resume point is sent");
    assert_eq!(stored, data);
    assert_eq!(
        last,
        ReceiverStep::Finish {
            total_bytes: 1000,
            crc32c: crc32c::crc32c(&data)
        }
    );
    // An empty snapshot: nothing to read, only the closing frame.
    let (sent, _, last) = transfer(&[], 64, 0);
    assert!(sent.is_empty());
    assert_eq!(
        last,
        ReceiverStep::Finish {
            total_bytes: 0,
            crc32c: 0
        }
    );
}

#[test]
fn bad_chunks_are_refused_as_invalid() {
    let rx = Receiving::resume(10, 4).unwrap();
    let chunk = |offset: u64, data: &'static [u8], crc: u32| {
        Frame::SnapshotChunk(SnapshotChunk {
            offset,
            crc32c: crc,
            data: Bytes::from_static(data),
        })
    };
    let good = crc32c::crc32c(b"abcd");
    for (frame, text) in [
        (chunk(0, b"abcd", good), "expected 4"),
        (chunk(4, b"abcd", good ^ 1), "checksum"),
        (
            chunk(4, b"abcdefgh", crc32c::crc32c(b"abcdefgh")),
            "runs past",
        ),
    ] {
        match rx.on_frame(frame) {
            ReceiverStep::Refuse(e) => {
                assert_eq!(e.reason, RefusalReason::Invalid);
                assert!(e.detail.contains(text), "{e:?} lacks {text:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        rx.on_frame(Frame::Welcome {
            node: 1,
            cluster: None
        }),
        ReceiverStep::Protocol(_)
    ));
    assert_eq!(
        Receiving::resume(10, 11).unwrap_err().reason,
        RefusalReason::Other
    );
}

#[test]
fn offers_are_checked_in_order_membership_size_sink() {
    assert_eq!(check_offer(2, &offer(1000), &policy()), Ok(()));
    let refused = |o: u64, p: OfferPolicy| check_offer(2, &offer(o), &p).unwrap_err();
    let e = refused(1001, policy());
    assert_eq!(e.reason, RefusalReason::TooLarge);
    assert!(
        e.detail.contains("1001") && e.detail.contains("1000"),
        "{e:?}"
    );
    assert!(e.detail.contains("--max-snapshot-receive-mib"), "{e:?}");
    let e = refused(
        1001,
        OfferPolicy {
            allowed: false,
            ..policy()
        },
    );
    assert_eq!(e.reason, RefusalReason::NotAllowed);
    let e = refused(
        5,
        OfferPolicy {
            has_sink: false,
            ..policy()
        },
    );
    assert_eq!(e.reason, RefusalReason::NotAccepting);
}

#[test]
fn the_sender_reads_answers_strictly() {
    assert_eq!(
        on_offer_answer(Some(Frame::SnapshotResume { offset: 5 }), 10).unwrap(),
        5
    );
    assert!(matches!(
        on_offer_answer(Some(Frame::SnapshotResume { offset: 11 }), 10),
        Err(SenderError::Failed(_))
    ));
    let refusal = SnapshotRefusal::new(RefusalReason::NoSpace, "full");
    assert!(matches!(
        on_offer_answer(Some(Frame::SnapshotResult { error: Some(refusal.clone()) }), 10),
        Err(SenderError::Refused(e)) if e == refusal
    ));
    assert!(matches!(
        on_offer_answer(None, 10),
        Err(SenderError::Failed(_))
    ));
    assert!(on_result(Some(Frame::SnapshotResult { error: None })).is_ok());
    assert!(matches!(
        on_result(Some(Frame::SnapshotResult {
            error: Some(refusal)
        })),
        Err(SenderError::Refused(_))
    ));
    assert!(matches!(
        on_result(Some(Frame::SnapshotResume { offset: 0 })),
        Err(SenderError::Failed(_))
    ));
    // A source shorter than announced.
    let mut tx = Sending::new(10, 4, 0);
    assert!(tx.on_data(Bytes::new()).is_err());
}
