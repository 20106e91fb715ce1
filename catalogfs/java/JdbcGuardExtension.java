package catalogfs;

import java.util.Set;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.parser.ParserInterface;
import org.apache.spark.sql.catalyst.plans.logical.Command;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;

import scala.Function1;
import scala.runtime.AbstractFunction1;
import scala.runtime.AbstractFunction2;
import scala.runtime.BoxedUnit;

/**
 * The guard of {@code catalogfs serve}'s consumer sessions (a {@code spark.sql.extensions} class).
 *
 * <p>A consumer session is a JDBC session (a statement on one of HiveServer2's threads,
 * {@code HiveServer2-Background-Pool: …} / {@code HiveServer2-Handler-Pool: …}; clients cannot
 * rename them) or a Spark Connect session whose client asked to be read-only
 * ({@code spark.catalogfs.session.readOnly=true}, set by {@code catalogfs sql}). Other Spark
 * Connect sessions hold the operator's token and are not guarded. In a consumer session:
 * <ul>
 *   <li>the parser ({@link GuardedParser}) refuses, before analysis, what reaches beyond the
 *       catalogue and settings outside the allow-list ({@link ConsumerRules});</li>
 *   <li>a check rule refuses the same on the analysed plan (views included), and every statement
 *       whose plan is a {@link Command} that changes something, except for an operator's JDBC
 *       session when {@code spark.catalogfs.jdbc.readOnly=false}. {@code SHOW}, {@code DESCRIBE},
 *       {@code EXPLAIN}, {@code SET}, {@code RESET} and {@code USE} pass.</li>
 * </ul>
 * A consumer Spark Connect session also runs its jobs in the {@code consumers} scheduler pool.
 * Thread names and class names are details of Spark 4.2: re-check on upgrades (tests/test_serve.py
 * and tests/test_security.py try each refusal).
 */
public final class JdbcGuardExtension extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {

    static final String READ_ONLY_KEY = "spark.catalogfs.jdbc.readOnly";
    static final String SESSION_READ_ONLY_KEY = "spark.catalogfs.session.readOnly";
    static final String SESSION_REFUSAL = "catalogfs: this session is read-only; refused ";
    static final String SESSION_BEYOND = "catalogfs: this session refuses ";
    static final String JDBC_BEYOND = "catalogfs: the JDBC endpoint refuses ";
    static final String HIVE_SERVER_THREADS = "HiveServer2-";
    static final String CONSUMER_POOL = "consumers";
    static final String[] DESCRIBING = {"Show", "Describe", "Explain"};
    static final Set<String> SESSION_STATE = Set.of(
        "SetCommand", "ResetCommand", "SetCatalogAndNamespace", "SetNamespaceCommand", "SetCatalogCommand");

    @Override
    public BoxedUnit apply(SparkSessionExtensions extensions) {
        extensions.injectParser(new AbstractFunction2<SparkSession, ParserInterface, ParserInterface>() {
            @Override
            public ParserInterface apply(SparkSession session, ParserInterface delegate) {
                return new GuardedParser(session, delegate);
            }
        });
        extensions.injectCheckRule(new AbstractFunction1<SparkSession, Function1<LogicalPlan, BoxedUnit>>() {
            @Override
            public Function1<LogicalPlan, BoxedUnit> apply(SparkSession session) {
                return new Guard(session, session.sparkContext().getConf().getBoolean(READ_ONLY_KEY, true));
            }
        });
        return BoxedUnit.UNIT;
    }

    static boolean onJdbcThread() {
        return Thread.currentThread().getName().startsWith(HIVE_SERVER_THREADS);
    }

    /** A Connect (or local) session whose client asked to be read-only. */
    static boolean sessionReadOnly(SparkSession session) {
        return "true".equalsIgnoreCase(session.conf().get(SESSION_READ_ONLY_KEY, "false").trim());
    }

    /** The prefix of a refusal of {@code reason} in this kind of session. */
    static String beyondPrefix() {
        return onJdbcThread() ? JDBC_BEYOND : SESSION_BEYOND;
    }

    /**
     * The first node of {@code plan} (children first, not inside a describing command) that is a
     * {@link Command} changing something, or null. {@code WITH … INSERT} has its command below the
     * root. With {@code sessionStateAllowed}, {@code SET}, {@code RESET} and {@code USE} pass.
     */
    static LogicalPlan writingCommand(LogicalPlan plan, boolean sessionStateAllowed) {
        String name = plan.getClass().getSimpleName();
        for (String prefix : DESCRIBING) {
            if (name.startsWith(prefix)) {
                return null;
            }
        }
        if (plan instanceof Command && !(sessionStateAllowed && SESSION_STATE.contains(name))) {
            return plan;
        }
        scala.collection.Iterator<LogicalPlan> children = plan.children().iterator();
        while (children.hasNext()) {
            LogicalPlan found = writingCommand(children.next(), sessionStateAllowed);
            if (found != null) {
                return found;
            }
        }
        return null;
    }

    static final class Guard extends AbstractFunction1<LogicalPlan, BoxedUnit> {
        private final SparkSession session;
        private final boolean jdbcReadOnly;

        Guard(SparkSession session, boolean jdbcReadOnly) {
            this.session = session;
            this.jdbcReadOnly = jdbcReadOnly;
        }

        @Override
        public BoxedUnit apply(LogicalPlan plan) {
            boolean jdbc = onJdbcThread();
            if (!jdbc && !sessionReadOnly(session)) {
                return BoxedUnit.UNIT;
            }
            if (!jdbc) {
                LogicalPlan writing = writingCommand(plan, false);
                if (writing != null) {
                    throw new UnsupportedOperationException(SESSION_REFUSAL + writing.nodeName());
                }
            } else if (jdbcReadOnly || !SessionRoles.operator(session)) {
                LogicalPlan writing = writingCommand(plan, true);
                if (writing != null) {
                    throw new UnsupportedOperationException("catalogfs: the JDBC endpoint is read-only; refused "
                        + writing.nodeName() + " (write through Spark Connect or a catalogfs job)");
                }
            }
            final String[] reason = {null};
            plan.foreachWithSubqueries(new AbstractFunction1<LogicalPlan, BoxedUnit>() {
                @Override
                public BoxedUnit apply(LogicalPlan node) {
                    if (reason[0] == null) {
                        reason[0] = ConsumerRules.beyondTheCatalogue(node);
                    }
                    return BoxedUnit.UNIT;
                }
            });
            if (reason[0] != null) {
                throw new UnsupportedOperationException(
                    reason[0].startsWith("catalogfs:") ? reason[0] : beyondPrefix() + reason[0]);
            }
            return BoxedUnit.UNIT;
        }
    }
}
