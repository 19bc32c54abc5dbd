//! The admin requests and `ping`, `stats` paging, against the in-memory fake server: each
//! client method sends the request it should and maps the answer to its type.

use std::time::Duration;

use qd_client::{Client, Cursor, JobState, SearchQuery};
use qd_protocol::Request;

use crate::fake::FakeQueue;

#[tokio::test]
async fn stats_and_queues_page_through_everything() {
    let fake = FakeQueue::start(vec![]).await;
    let client = Client::connect(fake.addr.clone()).await.unwrap();
    let names: Vec<String> = client.stats().await.unwrap().into_iter().map(|s| s.queue).collect();
    assert_eq!(names, ["a", "b"]);
    let names: Vec<String> = client.queues().await.unwrap().into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["a", "b"]);
    let sent = fake.with(|r| r.admin.clone());
    assert!(matches!(&sent[1], Request::Queues { after: Some(a), .. } if a == "a"), "{sent:?}");
}

#[tokio::test]
async fn job_lists_search_and_detail() {
    let fake = FakeQueue::start(vec![]).await;
    let client = Client::connect(fake.addr.clone()).await.unwrap();
    let page = client.jobs("q", JobState::Dead, Some(Cursor(vec![5])), 10).await.unwrap();
    assert_eq!(page.jobs[0].state, JobState::Dead);
    assert_eq!(page.next, Some(Cursor(vec![1])));
    let query = SearchQuery::Field { path: "user.id".into(), value: "42".into() };
    let found = client.search("q", None, query.clone(), None, 10).await.unwrap();
    assert_eq!((found.jobs[0].id, found.next), (2, None));
    assert_eq!(client.job(9).await.unwrap().summary.id, 9);
    assert!(client.job(404).await.unwrap_err().is_not_found());
    let sent = fake.with(|r| r.admin.clone());
    assert_eq!(
        sent[..2],
        [
            Request::Jobs {
                queue: "q".into(),
                state: JobState::Dead,
                cursor: Some(Cursor(vec![5])),
                limit: 10
            },
            Request::Search { queue: "q".into(), state: None, query, cursor: None, limit: 10 },
        ]
    );
}

#[tokio::test]
async fn changes_return_their_counts() {
    let fake = FakeQueue::start(vec![]).await;
    let client = Client::connect(fake.addr.clone()).await.unwrap();
    assert_eq!(client.retry_dead("q", &[1, 2]).await.unwrap(), 2);
    assert_eq!(client.retry_all_dead("q", Some("n")).await.unwrap(), 7);
    assert_eq!(client.purge_dead("q", Some(Duration::from_secs(60))).await.unwrap(), 7);
    assert_eq!(client.remove(&[1, 2, 3]).await.unwrap(), 3);
    assert_eq!(client.promote(&[4]).await.unwrap(), 1);
    client.pause("q").await.unwrap();
    client.resume("q").await.unwrap();
    client.ping().await.unwrap();
    let sent = fake.with(|r| r.admin.clone());
    assert_eq!(
        sent,
        [
            Request::RetryDead { queue: "q".into(), ids: vec![1, 2] },
            Request::RetryAllDead { queue: "q".into(), name: Some("n".into()) },
            Request::PurgeDead { queue: "q".into(), older_than_ms: Some(60_000) },
            Request::Remove { ids: vec![1, 2, 3] },
            Request::Promote { ids: vec![4] },
            Request::Pause { queue: "q".into() },
            Request::Resume { queue: "q".into() },
        ]
    );
    assert_eq!(fake.with(|r| r.pings), 1);
    // Bad queue names are refused before sending.
    assert!(matches!(client.pause("no spaces").await, Err(qd_client::Error::Invalid { .. })));
}
