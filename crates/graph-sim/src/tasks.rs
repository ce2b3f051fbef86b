//! Universal Print's task model for pull printing: the app's `printTaskDefinition`s, the
//! `printTaskTrigger` (event `jobStarted`) an administrator puts on a printer, and the
//! `printTask`s created in `processing` when a job starts on such a printer, which the app
//! updates when it is done with the job.
//!
//! The simulator knows one app registration, so every definition, trigger and task here is
//! "this app's".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::model::JobKey;

/// The most task definitions and tasks held; past that the oldest tasks are forgotten.
const MAX_TASKS: usize = 100_000;

/// A `printTask`'s `status.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskState {
    Pending,
    Processing,
    Completed,
    Aborted,
}

/// A `printTask` as Graph shows it, with what the simulator knows besides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSnapshot {
    pub id: String,
    /// The definition the task belongs to (not on Graph's wire format; shown for tests).
    #[serde(skip)]
    pub definition_id: String,
    /// The job's URL: `{base}/print/printers/{printerId}/jobs/{jobId}`.
    pub parent_url: String,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

struct Task {
    definition_id: String,
    job: JobKey,
    status: TaskStatus,
}

#[derive(Default)]
struct Board {
    next_id: u64,
    /// Definition id to display name.
    definitions: BTreeMap<String, String>,
    /// Printer id to the definition its trigger starts tasks of.
    triggers: HashMap<String, String>,
    /// Task id to task, in creation order (ids grow).
    tasks: BTreeMap<String, Task>,
}

impl Board {
    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:08}", self.next_id)
    }
}

/// Definitions, triggers and tasks, behind one lock: tests and pull-printing demos create a
/// few of each, not thousands a second.
#[derive(Default)]
pub struct TaskBoard {
    board: Mutex<Board>,
}

impl TaskBoard {
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a task definition of this app; returns its id.
    pub fn create_definition(&self, display_name: &str) -> String {
        let mut board = self.lock();
        let id = board.fresh_id("definition");
        board
            .definitions
            .insert(id.clone(), display_name.to_owned());
        id
    }

    /// This app's definitions: id and display name.
    pub fn definitions(&self) -> Vec<(String, String)> {
        self.lock()
            .definitions
            .iter()
            .map(|(id, name)| (id.clone(), name.clone()))
            .collect()
    }

    /// Puts a `jobStarted` trigger of `definition_id` on the printer; false when there is no
    /// such definition. A printer takes one trigger; a new one replaces it.
    pub fn set_trigger(&self, printer_id: &str, definition_id: &str) -> bool {
        let mut board = self.lock();
        if !board.definitions.contains_key(definition_id) {
            return false;
        }
        board
            .triggers
            .insert(printer_id.to_owned(), definition_id.to_owned());
        true
    }

    /// A job started on a printer: with a trigger there, a task in `processing` is created
    /// for it; returns the task's (definition id, task id).
    pub fn job_started(&self, job: &JobKey) -> Option<(String, String)> {
        let mut board = self.lock();
        let definition_id = board.triggers.get(&job.printer_id)?.clone();
        let id = board.fresh_id("task");
        board.tasks.insert(
            id.clone(),
            Task {
                definition_id: definition_id.clone(),
                job: job.clone(),
                status: TaskStatus {
                    state: TaskState::Processing,
                    description: None,
                },
            },
        );
        while board.tasks.len() > MAX_TASKS {
            board.tasks.pop_first();
        }
        Some((definition_id, id))
    }

    /// Whether a task of this app holds the job in `processing`, which abort needs.
    pub fn holds(&self, job: &JobKey) -> bool {
        self.lock()
            .tasks
            .values()
            .any(|task| task.job == *job && task.status.state == TaskState::Processing)
    }

    /// The job's tasks, with `base` (the API's URL) in their `parentUrl`.
    pub fn of_job(&self, job: &JobKey, base: &str) -> Vec<TaskSnapshot> {
        self.lock()
            .tasks
            .iter()
            .filter(|(_, task)| task.job == *job)
            .map(|(id, task)| snapshot(id, task, base))
            .collect()
    }

    pub fn get(&self, definition_id: &str, task_id: &str, base: &str) -> Option<TaskSnapshot> {
        let board = self.lock();
        let task = board.tasks.get(task_id)?;
        (task.definition_id == definition_id).then(|| snapshot(task_id, task, base))
    }

    /// Sets a task's status, as `PATCH …/tasks/{taskId}` does; `None` for an unknown task.
    pub fn update(
        &self,
        definition_id: &str,
        task_id: &str,
        status: TaskStatus,
        base: &str,
    ) -> Option<TaskSnapshot> {
        let mut board = self.lock();
        let task = board
            .tasks
            .get_mut(task_id)
            .filter(|task| task.definition_id == definition_id)?;
        task.status = status;
        Some(snapshot(task_id, task, base))
    }
}

fn snapshot(id: &str, task: &Task, base: &str) -> TaskSnapshot {
    TaskSnapshot {
        id: id.to_owned(),
        definition_id: task.definition_id.clone(),
        parent_url: task.job.url(base),
        status: task.status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_started_under_a_trigger_is_held_by_a_processing_task_until_it_is_completed() {
        let board = TaskBoard::default();
        let job = JobKey::new("printer", "1");
        assert_eq!(board.job_started(&job), None, "no trigger, no task");
        assert!(!board.set_trigger("printer", "no-such-definition"));
        let definition = board.create_definition("policy");
        assert!(board.set_trigger("printer", &definition));
        let (of, task) = board.job_started(&job).expect("a task");
        assert_eq!(of, definition);
        assert!(board.holds(&job));
        assert!(!board.holds(&JobKey::new("printer", "2")));
        let done = TaskStatus {
            state: TaskState::Completed,
            description: Some("aborted".into()),
        };
        let updated = board
            .update(&definition, &task, done.clone(), "https://g/v1.0")
            .expect("the task");
        assert_eq!(updated.status, done);
        assert_eq!(
            updated.parent_url,
            "https://g/v1.0/print/printers/printer/jobs/1"
        );
        assert!(!board.holds(&job));
        assert!(board.update("other", &task, done, "b").is_none());
    }
}
